//! The internal credential: every call between Switchboard's services (and from backends)
//! carries `authorization: Bearer <secret>`; servers refuse calls without it.
//!
//! Servers add [`RequireSecret`] as a layer ([`InternalSecret::server_layer`]); clients wrap
//! their channel with [`AttachSecret`] ([`InternalSecret::channel`]). The secret never appears
//! in `Debug` output, logs or error messages.

use std::fmt;
use std::sync::Arc;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::{Interceptor, InterceptorLayer};
use tonic::transport::Channel;

use crate::observe::ObservedChannel;
use tonic::{Request, Status};

/// The metadata key that carries the credential.
pub const HEADER: &str = "authorization";
/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// A channel whose every call carries the internal credential.
pub type SecuredChannel = InterceptedService<ObservedChannel, AttachSecret>;

/// Why a secret was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretError {
    /// Fewer than [`MIN_SECRET_BYTES`] bytes.
    TooShort,
    /// Not printable ASCII (it travels in a header).
    NotPrintable,
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort => write!(
                f,
                "the internal secret must be at least {MIN_SECRET_BYTES} bytes"
            ),
            Self::NotPrintable => f.write_str("the internal secret must be printable ASCII"),
        }
    }
}

impl std::error::Error for SecretError {}

/// The shared secret of the internal network.
#[derive(Clone, PartialEq, Eq)]
pub struct InternalSecret {
    bearer: Arc<str>,
}

impl fmt::Debug for InternalSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InternalSecret(<redacted>)")
    }
}

impl InternalSecret {
    /// Checks and wraps `secret`.
    ///
    /// # Errors
    /// [`SecretError`] when it is too short or not printable ASCII.
    pub fn new(secret: &str) -> Result<Self, SecretError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort);
        }
        if !secret.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(SecretError::NotPrintable);
        }
        Ok(Self {
            bearer: format!("Bearer {secret}").into(),
        })
    }

    /// A fresh random secret (244 random bits), for a single process such as `dev`.
    pub fn random() -> Self {
        let secret = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        Self {
            bearer: format!("Bearer {secret}").into(),
        }
    }

    /// The layer that makes a tonic server refuse calls without this secret.
    pub fn server_layer(&self) -> InterceptorLayer<RequireSecret> {
        InterceptorLayer::new(RequireSecret {
            expected: Arc::clone(&self.bearer),
        })
    }

    /// Wraps `channel` so every call carries this secret.
    pub fn channel(&self, channel: Channel) -> SecuredChannel {
        InterceptedService::new(ObservedChannel::new(channel), self.attach())
    }

    /// The client interceptor carrying this secret.
    pub fn attach(&self) -> AttachSecret {
        // Checked printable ASCII in `new`, so this parse cannot fail; fall back to an
        // empty value (refused by every server) rather than panic.
        let value = self
            .bearer
            .parse()
            .unwrap_or_else(|_| MetadataValue::from_static(""));
        AttachSecret { value }
    }
}

/// Client interceptor: adds the credential to every call.
#[derive(Clone)]
pub struct AttachSecret {
    value: MetadataValue<Ascii>,
}

impl fmt::Debug for AttachSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AttachSecret(<redacted>)")
    }
}

impl Interceptor for AttachSecret {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert(HEADER, self.value.clone());
        Ok(request)
    }
}

/// Server interceptor: refuses a call whose credential is missing or wrong with
/// `UNAUTHENTICATED`.
#[derive(Clone)]
pub struct RequireSecret {
    expected: Arc<str>,
}

impl fmt::Debug for RequireSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RequireSecret(<redacted>)")
    }
}

impl Interceptor for RequireSecret {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let given = request
            .metadata()
            .get(HEADER)
            .map(MetadataValue::as_bytes)
            .unwrap_or_default();
        if constant_time_eq(given, self.expected.as_bytes()) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "missing or wrong internal credential",
            ))
        }
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_rules_and_redaction() {
        assert_eq!(InternalSecret::new("short"), Err(SecretError::TooShort));
        assert_eq!(
            InternalSecret::new("sixteen bytes  !!"),
            Err(SecretError::NotPrintable)
        );
        let secret = InternalSecret::new("0123456789abcdef").expect("valid");
        assert!(!format!("{secret:?}").contains("0123"));
        assert!(!format!("{:?}", secret.attach()).contains("0123"));
    }

    #[test]
    fn interceptors_agree() {
        let secret = InternalSecret::new("0123456789abcdef").expect("valid");
        let attached = secret.attach().call(Request::new(())).expect("attach");
        let mut require = RequireSecret {
            expected: Arc::clone(&secret.bearer),
        };
        assert!(require.call(attached).is_ok());
        assert!(require.call(Request::new(())).is_err());
        let other = InternalSecret::new("fedcba9876543210").expect("valid");
        let wrong = other.attach().call(Request::new(())).expect("attach");
        let refused = require.call(wrong).expect_err("wrong secret");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(!refused.message().contains("fedcba"));
    }
}
