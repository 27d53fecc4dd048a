//! The default authorisation policy (PROTOCOL.md §8).
//!
//! The admin may do everything. Other users may subscribe to and send events of any class but
//! `core` (in their own service), send `user send_event` and `session send_event`, use
//! `session cmd` and `session stop` on sessions of their own user, `session log` and `ping`,
//! and manage their own subscriptions (`unsubscribe`, `get_subscriptions`, which only touch the
//! connection itself).

/// The role that may do everything.
pub const ADMIN_ROLE: &str = "admin";

/// What the policy says about a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Allowed.
    Allowed,
    /// Allowed only on sessions of the caller's own user.
    OwnUserOnly,
    /// Refused with `unauthorized`.
    Denied,
}

/// Tells whether `roles` include the admin role.
pub fn is_admin(roles: &[String]) -> bool {
    roles.iter().any(|role| role == ADMIN_ROLE)
}

/// Returns the access `roles` have to the core command `subclass`/`cmd`.
pub fn command_access(roles: &[String], subclass: &str, cmd: &str) -> Access {
    if is_admin(roles) {
        return Access::Allowed;
    }
    match (subclass, cmd) {
        ("user", "send_event")
        | ("session", "send_event" | "log" | "ping")
        | ("core", "ping")
        | ("event", "subscribe" | "unsubscribe" | "get_subscriptions" | "send_event" | "send") => {
            Access::Allowed
        }
        ("session", "cmd" | "stop") => Access::OwnUserOnly,
        _ => Access::Denied,
    }
}

/// Tells whether `roles` may subscribe to or send events of `class` in `service`, for a
/// connection of `own_service`.
pub fn event_allowed(roles: &[String], class: &str, service: &str, own_service: &str) -> bool {
    is_admin(roles) || (class != "core" && service == own_service)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_default_policy() {
        let admin = vec![ADMIN_ROLE.to_owned()];
        let user: Vec<String> = vec![];
        assert_eq!(command_access(&admin, "user", "list"), Access::Allowed);
        assert_eq!(command_access(&user, "user", "list"), Access::Denied);
        assert_eq!(command_access(&user, "user", "get"), Access::Denied);
        assert_eq!(
            command_access(&user, "session", "stop"),
            Access::OwnUserOnly
        );
        assert_eq!(command_access(&user, "session", "log"), Access::Allowed);
        assert!(event_allowed(&admin, "core", "", ""));
        assert!(!event_allowed(&user, "core", "", ""));
        assert!(event_allowed(&user, "media", "", ""));
        assert!(!event_allowed(&user, "media", "other", ""));
    }
}
