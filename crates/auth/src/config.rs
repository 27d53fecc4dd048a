//! Auth configuration: which backends are enabled and the throttling of failed logins.

use std::path::PathBuf;

use crate::jwt::JwtConfig;
use crate::throttle::ThrottleConfig;
use crate::users::UserRecord;

/// Default admin user name.
pub const DEFAULT_ADMIN_USER: &str = "admin";

/// What the auth service accepts. Every backend is optional; a login is tried against the
/// admin, then a token (when the password is a JWT and keys are configured), then the users.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// The admin user; it has the `admin` role.
    pub admin_user: String,
    /// The admin's password; `None` disables the admin login.
    pub admin_password: Option<String>,
    /// Users given directly (embedding and tests), with argon2id hashes.
    pub users: Vec<UserRecord>,
    /// The users file, re-read when it changes.
    pub users_file: Option<PathBuf>,
    /// Signed-token keys.
    pub jwt: JwtConfig,
    /// Failed logins allowed per remote address.
    pub throttle: ThrottleConfig,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("admin_user", &self.admin_user)
            .field(
                "admin_password",
                &self.admin_password.as_ref().map(|_| "<redacted>"),
            )
            .field("users", &self.users)
            .field("users_file", &self.users_file)
            .field("jwt", &self.jwt)
            .field("throttle", &self.throttle)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            admin_user: DEFAULT_ADMIN_USER.to_owned(),
            admin_password: None,
            users: Vec::new(),
            users_file: None,
            jwt: JwtConfig::default(),
            throttle: ThrottleConfig::default(),
        }
    }
}
