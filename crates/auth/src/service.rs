//! The credential check: admin, signed token or users, behind the login throttle.

use std::sync::Arc;

use switchboard_proto::internal::constant_time_eq;
use switchboard_protocol::policy::ADMIN_ROLE;

use crate::config::Config;
use crate::jwt::{JwtConfigError, JwtVerifier, looks_like_jwt};
use crate::password::verify_password;
use crate::throttle::Throttle;
use crate::users::{UserTable, UsersFile, UsersFileError, table};

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Unknown user, wrong password or refused token (one answer for all).
    InvalidCredentials,
    /// Too many failed logins from this address, or on this account; retry later.
    TooManyAttempts,
}

/// Why the authenticator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The users file.
    #[error(transparent)]
    UsersFile(#[from] UsersFileError),
    /// The users given directly.
    #[error("invalid user: {0}")]
    Users(String),
    /// The token keys.
    #[error("invalid token configuration: {0}")]
    Jwt(#[from] JwtConfigError),
}

/// One login attempt.
#[derive(Clone, Default)]
pub struct Attempt<'a> {
    /// The user asked for.
    pub user: &'a str,
    /// The password or token.
    pub password: &'a str,
    /// The session id asked for ("" for a fresh one).
    pub session_id: &'a str,
    /// The client's `remote` (`ws:IP:PORT`); failures are counted by its address.
    pub remote: &'a str,
}

impl std::fmt::Debug for Attempt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempt")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("session_id", &self.session_id)
            .field("remote", &self.remote)
            .finish()
    }
}

/// Who a successful login is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The authenticated user.
    pub user: String,
    /// The session id to register.
    pub session_id: String,
    /// The session's roles.
    pub roles: Vec<String>,
    /// When the credential expires (Unix seconds), for token logins.
    pub expires_at: Option<u64>,
}

/// Checks credentials against the configured backends.
#[derive(Debug, Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    admin_user: String,
    admin_password: Option<String>,
    users: UserTable,
    users_file: Option<UsersFile>,
    jwt: Option<JwtVerifier>,
    throttle: Arc<Throttle>,
    /// Password checks running at once: each costs the hash's memory (19 MiB by default).
    hashing: Arc<tokio::sync::Semaphore>,
}

/// Password checks allowed at once per core.
const HASHES_PER_CORE: usize = 2;

/// A hash to check unknown users' passwords against, so a refusal takes as long whether or
/// not the user exists.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| crate::password::hash_password("decoy").unwrap_or_default())
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("admin_user", &self.admin_user)
            .field("users", &self.users.len())
            .field("users_file", &self.users_file)
            .field("jwt", &self.jwt)
            .finish_non_exhaustive()
    }
}

struct Granted {
    roles: Vec<String>,
    expires_at: Option<u64>,
}

impl Authenticator {
    /// Creates an authenticator for `config`, loading the users file and token keys.
    ///
    /// # Errors
    /// [`SetupError`] when a user, the users file or a key is invalid.
    pub fn new(config: Config) -> Result<Self, SetupError> {
        let users = table(config.users).map_err(SetupError::Users)?;
        let users_file = config.users_file.map(UsersFile::open).transpose()?;
        Ok(Self {
            inner: Arc::new(Inner {
                admin_user: config.admin_user,
                admin_password: config.admin_password,
                users,
                users_file,
                jwt: JwtVerifier::new(&config.jwt)?,
                throttle: Throttle::new(config.throttle),
                hashing: Arc::new(tokio::sync::Semaphore::new(
                    std::thread::available_parallelism().map_or(1, usize::from) * HASHES_PER_CORE,
                )),
            }),
        })
    }

    /// Checks an attempt; picks a fresh UUID session id when none is asked for.
    ///
    /// # Errors
    /// [`AuthError::TooManyAttempts`] while the address or the account is throttled (the
    /// credentials are not even checked), else [`AuthError::InvalidCredentials`] for any
    /// refusal.
    ///
    /// # Cancel safety
    /// Dropping the future before it completes counts the attempt as a failure.
    pub async fn login(&self, attempt: Attempt<'_>) -> Result<Identity, AuthError> {
        let reservation = self
            .inner
            .throttle
            .reserve(attempt.remote, attempt.user)
            .ok_or(AuthError::TooManyAttempts)?;
        let Some(granted) = self.check(attempt.user, attempt.password).await else {
            drop(reservation);
            return Err(AuthError::InvalidCredentials);
        };
        reservation.succeeded();
        let session_id = if attempt.session_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            attempt.session_id.to_owned()
        };
        Ok(Identity {
            user: attempt.user.to_owned(),
            session_id,
            roles: granted.roles,
            expires_at: granted.expires_at,
        })
    }

    async fn check(&self, user: &str, password: &str) -> Option<Granted> {
        let inner = &self.inner;
        if let Some(admin_password) = &inner.admin_password
            && user == inner.admin_user
        {
            return constant_time_eq(password.as_bytes(), admin_password.as_bytes()).then(|| {
                Granted {
                    roles: vec![ADMIN_ROLE.to_owned()],
                    expires_at: None,
                }
            });
        }
        if let Some(jwt) = &inner.jwt
            && looks_like_jwt(password)
        {
            return match jwt.verify(password) {
                Ok(claims) if claims.user == user => Some(Granted {
                    roles: claims.roles,
                    expires_at: Some(claims.expires_at),
                }),
                Ok(_) => {
                    tracing::debug!(user, "token refused: sub is another user");
                    None
                }
                Err(error) => {
                    tracing::debug!(user, %error, "token refused");
                    None
                }
            };
        }
        if inner.users.is_empty() && inner.users_file.is_none() {
            return None;
        }
        let record = match inner.users.get(user) {
            Some(record) => Some(record.clone()),
            None => inner
                .users_file
                .as_ref()
                .and_then(|file| file.users().get(user).cloned()),
        };
        let (hash, roles) = match record {
            Some(record) => (Some(record.password_hash), Some(record.roles)),
            None => (None, None),
        };
        let password = password.to_owned();
        // argon2 costs tens of milliseconds and megabytes by design: a bounded number at
        // once, off the runtime.
        // The permit moves into the blocking task: a caller that gives up does not free it
        // while its hash still runs, so hashes at once stay bounded.
        let permit = Arc::clone(&inner.hashing).acquire_owned().await.ok()?;
        let matches = tokio::task::spawn_blocking(move || {
            let hash = hash.as_deref().unwrap_or_else(|| decoy_hash());
            let matches = verify_password(&password, hash);
            drop(permit);
            matches
        })
        .await
        .ok()?;
        Some(Granted {
            roles: roles.filter(|_| matches)?,
            expires_at: None,
        })
    }
}
