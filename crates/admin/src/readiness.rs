//! Whether a process can do its job now: a set of named checks, run on each probe, and a
//! draining flag that SIGTERM sets before connections are closed.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How long one check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What a check answers: `Err` says why the process is not ready.
pub type CheckResult = Result<(), String>;

type CheckFuture = Pin<Box<dyn Future<Output = CheckResult> + Send>>;
type Check = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// The readiness of one process.
#[derive(Default)]
pub struct Readiness {
    draining: AtomicBool,
    checks: Mutex<Vec<(String, Check)>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("draining", &self.is_draining())
            .finish_non_exhaustive()
    }
}

impl Readiness {
    /// A process with no checks yet, not draining.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds a check named `name` (it names the failure in `/health/ready`'s body).
    pub fn add_check<F, Fut>(&self, name: impl Into<String>, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = CheckResult> + Send + 'static,
    {
        let check: Check = Arc::new(move || Box::pin(check()));
        self.checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((name.into(), check));
    }

    /// Marks the process as draining: from now on it is never ready.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// True once [`Readiness::start_draining`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Runs every check at once (each bounded by [`CHECK_TIMEOUT`]) and returns the failures,
    /// `draining` first when the process is draining. Empty means ready.
    pub async fn failures(&self) -> Vec<(String, String)> {
        let checks = self
            .checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let runs = checks.into_iter().map(|(name, check)| async move {
            match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(Ok(())) => None,
                Ok(Err(reason)) => Some((name, reason)),
                Err(_) => Some((name, format!("no answer within {CHECK_TIMEOUT:?}"))),
            }
        });
        let mut failures: Vec<_> = futures_util::future::join_all(runs)
            .await
            .into_iter()
            .flatten()
            .collect();
        if self.is_draining() {
            failures.insert(0, ("draining".to_owned(), "shutting down".to_owned()));
        }
        failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failing_and_slow_checks_are_named_and_draining_comes_first() {
        let readiness = Readiness::new();
        readiness.add_check("fine", || async { Ok(()) });
        readiness.add_check("redis", || async { Err("connection refused".to_owned()) });
        assert_eq!(
            readiness.failures().await,
            vec![("redis".to_owned(), "connection refused".to_owned())]
        );
        readiness.start_draining();
        let failures = readiness.failures().await;
        assert_eq!(failures[0].0, "draining");
        assert_eq!(failures.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_that_hangs_fails_after_the_timeout() {
        let readiness = Readiness::new();
        readiness.add_check("hangs", std::future::pending);
        let failures = readiness.failures().await;
        assert_eq!(failures.len(), 1);
        assert!(failures[0].1.starts_with("no answer within"));
    }
}
