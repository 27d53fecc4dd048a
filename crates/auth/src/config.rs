//! Auth configuration.

/// Default admin user name.
pub const DEFAULT_ADMIN_USER: &str = "admin";

/// A user with a password given in the configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticUser {
    /// The user name.
    pub user: String,
    /// The password, compared as is.
    pub password: String,
    /// Roles granted at login.
    pub roles: Vec<String>,
}

impl std::fmt::Debug for StaticUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticUser")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("roles", &self.roles)
            .finish()
    }
}

/// What the auth service accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The admin user; it has the `admin` role.
    pub admin_user: String,
    /// The admin's password; `None` disables the admin login.
    pub admin_password: Option<String>,
    /// Further users with their passwords and roles.
    pub users: Vec<StaticUser>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            admin_user: DEFAULT_ADMIN_USER.to_owned(),
            admin_password: None,
            users: Vec::new(),
        }
    }
}
