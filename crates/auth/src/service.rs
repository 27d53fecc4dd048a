//! The credential check.

use switchboard_protocol::policy::ADMIN_ROLE;

use crate::config::Config;

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Unknown user or wrong password (one answer for both).
    InvalidCredentials,
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
}

/// Checks credentials against the configuration.
#[derive(Debug, Clone)]
pub struct Authenticator {
    config: Config,
}

impl Authenticator {
    /// Creates an authenticator for `config`.
    pub fn new(config: Config) -> Self {
        Self { config }
    }

    /// Checks `user`/`password`; picks a fresh UUID session id when `session_id` is empty.
    ///
    /// # Errors
    /// [`AuthError::InvalidCredentials`] for an unknown user or a wrong password.
    pub fn login(
        &self,
        user: &str,
        password: &str,
        session_id: &str,
    ) -> Result<Identity, AuthError> {
        let roles = self
            .roles_for(user, password)
            .ok_or(AuthError::InvalidCredentials)?;
        let session_id = if session_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            session_id.to_owned()
        };
        Ok(Identity {
            user: user.to_owned(),
            session_id,
            roles,
        })
    }

    fn roles_for(&self, user: &str, password: &str) -> Option<Vec<String>> {
        if let Some(admin_password) = &self.config.admin_password
            && user == self.config.admin_user
        {
            return constant_time_eq(password.as_bytes(), admin_password.as_bytes())
                .then(|| vec![ADMIN_ROLE.to_owned()]);
        }
        self.config
            .users
            .iter()
            .find(|candidate| candidate.user == user)
            .filter(|candidate| {
                constant_time_eq(password.as_bytes(), candidate.password.as_bytes())
            })
            .map(|candidate| candidate.roles.clone())
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StaticUser;

    fn authenticator() -> Authenticator {
        Authenticator::new(Config {
            admin_password: Some("secret".into()),
            users: vec![StaticUser {
                user: "bob".into(),
                password: "pw".into(),
                roles: vec![],
            }],
            ..Config::default()
        })
    }

    #[test]
    fn test_admin_and_users() {
        let auth = authenticator();
        let admin = auth.login("admin", "secret", "").expect("admin logs in");
        assert_eq!(admin.roles, vec!["admin".to_owned()]);
        assert_eq!(admin.session_id.len(), 36);
        assert_eq!(
            auth.login("admin", "nope", ""),
            Err(AuthError::InvalidCredentials)
        );
        assert_eq!(
            auth.login("eve", "secret", ""),
            Err(AuthError::InvalidCredentials)
        );
        let bob = auth.login("bob", "pw", "s1").expect("bob logs in");
        assert_eq!(bob.session_id, "s1");
        assert!(bob.roles.is_empty());
    }

    #[test]
    fn test_admin_disabled_without_password() {
        let auth = Authenticator::new(Config::default());
        assert!(auth.login("admin", "", "").is_err());
    }
}
