//! The authorisation policy (PROTOCOL.md §8) as configuration.
//!
//! A policy maps role names to rules. A session's rules are those of each of its roles plus
//! those of the role `"*"`, which every logged-in session has; something is allowed when one
//! of them allows it as a whole (a role that allows class `news` in the own service and another
//! that allows other services do not together allow `news` in another service). The default ([`Policy::default`]) is §8: the `admin` role may do
//! everything; every session may subscribe to and send events of any class but `core` in its
//! own service, send `user send_event` and `session send_event`, use `session cmd` and
//! `session stop` on sessions of its own user, `session log`, `ping`, and manage its own
//! subscriptions.
//!
//! ```toml
//! [roles."*"]
//! commands = ["event/*", "session/ping", "core/ping"]   # "subclass/cmd", "subclass/*", "*"
//! subscribe = ["*", "!core"]                            # event classes; "!x" excludes x
//! send = ["chat"]
//! other_users = false     # session cmd/stop on other users' sessions
//! other_services = false  # subscribe/send with a `service` other than the connection's
//!
//! [roles.operator]
//! commands = ["user/list", "user/get"]
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

/// The role that may do everything under the default policy.
pub const ADMIN_ROLE: &str = "admin";
/// The role every logged-in session has.
pub const EVERYONE: &str = "*";

/// Every `core` command as (subclass, cmd); `user login` is outside the policy.
pub const COMMANDS: &[(&str, &str)] = &[
    ("user", "login"),
    ("user", "list"),
    ("user", "get"),
    ("user", "send_event"),
    ("session", "stop"),
    ("session", "send_event"),
    ("session", "cmd"),
    ("session", "log"),
    ("session", "ping"),
    ("core", "ping"),
    ("event", "subscribe"),
    ("event", "unsubscribe"),
    ("event", "get_subscriptions"),
    ("event", "send_event"),
    ("event", "send"),
];

/// Tells whether `subclass`/`cmd` is a `core` command.
pub fn is_command(subclass: &str, cmd: &str) -> bool {
    COMMANDS.contains(&(subclass, cmd))
}

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

/// Subscribing or sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `event subscribe`.
    Subscribe,
    /// `event send_event`.
    Send,
}

/// What one role may do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRules {
    /// Commands: `"subclass/cmd"`, `"subclass/*"` or `"*"`.
    #[serde(default)]
    pub commands: Vec<String>,
    /// Event classes it may subscribe to: names, `"*"`, and `"!name"` exclusions.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Event classes it may send, as `subscribe`.
    #[serde(default)]
    pub send: Vec<String>,
    /// Whether `session cmd` and `session stop` may target other users' sessions.
    #[serde(default)]
    pub other_users: bool,
    /// Whether subscribe and send may name another service than the connection's.
    #[serde(default)]
    pub other_services: bool,
}

/// Why a policy was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError(pub String);

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PolicyError {}

/// Roles and their rules.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Rules by role name; `"*"` applies to every session.
    #[serde(default)]
    pub roles: BTreeMap<String, RoleRules>,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| (*item).to_owned()).collect()
}

impl Default for Policy {
    fn default() -> Self {
        let admin = RoleRules {
            commands: strings(&["*"]),
            subscribe: strings(&["*"]),
            send: strings(&["*"]),
            other_users: true,
            other_services: true,
        };
        let everyone = RoleRules {
            commands: strings(&[
                "user/send_event",
                "session/send_event",
                "session/cmd",
                "session/stop",
                "session/log",
                "session/ping",
                "core/ping",
                "event/subscribe",
                "event/unsubscribe",
                "event/get_subscriptions",
                "event/send_event",
                "event/send",
            ]),
            subscribe: strings(&["*", "!core"]),
            send: strings(&["*", "!core"]),
            other_users: false,
            other_services: false,
        };
        Self {
            roles: BTreeMap::from([
                (ADMIN_ROLE.to_owned(), admin),
                (EVERYONE.to_owned(), everyone),
            ]),
        }
    }
}

fn command_matches(pattern: &str, subclass: &str, cmd: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.split_once('/') {
        Some((sub, "*")) => sub == subclass,
        Some((sub, command)) => sub == subclass && command == cmd,
        None => false,
    }
}

fn class_allowed(patterns: &[String], class: &str) -> bool {
    let mut allowed = false;
    for pattern in patterns {
        match pattern.strip_prefix('!') {
            Some(excluded) if excluded == class => return false,
            Some(_) => {}
            None => allowed |= pattern == "*" || pattern == class,
        }
    }
    allowed
}

impl Policy {
    /// Parses a TOML policy and checks it.
    ///
    /// # Errors
    /// [`PolicyError`] for invalid TOML, an unknown key or a pattern naming no command.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let policy: Policy = toml::from_str(text)
            .map_err(|error| PolicyError(format!("invalid policy: {}", error.message())))?;
        policy.check()?;
        Ok(policy)
    }

    /// Checks that every command pattern names at least one command.
    ///
    /// # Errors
    /// [`PolicyError`] naming the role and the pattern.
    pub fn check(&self) -> Result<(), PolicyError> {
        for (role, rules) in &self.roles {
            for pattern in &rules.commands {
                if !COMMANDS
                    .iter()
                    .any(|(subclass, cmd)| command_matches(pattern, subclass, cmd))
                {
                    return Err(PolicyError(format!(
                        "role {role:?}: {pattern:?} names no command (use \"subclass/cmd\", \"subclass/*\" or \"*\")"
                    )));
                }
            }
        }
        Ok(())
    }

    fn rules<'a>(&'a self, roles: &'a [String]) -> impl Iterator<Item = &'a RoleRules> + 'a {
        self.roles.get(EVERYONE).into_iter().chain(
            roles
                .iter()
                .filter(|role| role.as_str() != EVERYONE)
                .filter_map(|role| self.roles.get(role)),
        )
    }

    /// Returns the access `roles` have to the core command `subclass`/`cmd`.
    pub fn command_access(&self, roles: &[String], subclass: &str, cmd: &str) -> Access {
        let mut access = Access::Denied;
        for rules in self.rules(roles) {
            if rules
                .commands
                .iter()
                .any(|pattern| command_matches(pattern, subclass, cmd))
            {
                let targets_sessions = subclass == "session" && matches!(cmd, "cmd" | "stop");
                if rules.other_users || !targets_sessions {
                    return Access::Allowed;
                }
                access = Access::OwnUserOnly;
            }
        }
        access
    }

    /// Tells whether `roles` may subscribe to or send (`direction`) events of `class` in
    /// `service`, for a connection of `own_service`.
    pub fn event_allowed(
        &self,
        roles: &[String],
        direction: Direction,
        class: &str,
        service: &str,
        own_service: &str,
    ) -> bool {
        self.rules(roles).any(|rules| {
            let classes = match direction {
                Direction::Subscribe => &rules.subscribe,
                Direction::Send => &rules.send,
            };
            (service == own_service || rules.other_services) && class_allowed(classes, class)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(names: &[&str]) -> Vec<String> {
        strings(names)
    }

    #[test]
    fn default_policy_is_section_8() {
        let policy = Policy::default();
        let admin = roles(&["admin"]);
        let user = roles(&[]);
        for (subclass, cmd) in COMMANDS {
            assert_eq!(
                policy.command_access(&admin, subclass, cmd),
                Access::Allowed
            );
        }
        assert_eq!(policy.command_access(&user, "user", "list"), Access::Denied);
        assert_eq!(policy.command_access(&user, "user", "get"), Access::Denied);
        assert_eq!(
            policy.command_access(&user, "user", "send_event"),
            Access::Allowed
        );
        assert_eq!(
            policy.command_access(&user, "session", "stop"),
            Access::OwnUserOnly
        );
        assert_eq!(
            policy.command_access(&user, "session", "cmd"),
            Access::OwnUserOnly
        );
        assert_eq!(
            policy.command_access(&user, "session", "log"),
            Access::Allowed
        );
        let subscribe = Direction::Subscribe;
        assert!(policy.event_allowed(&admin, subscribe, "core", "", ""));
        assert!(policy.event_allowed(&admin, subscribe, "media", "other", ""));
        assert!(!policy.event_allowed(&user, subscribe, "core", "", ""));
        assert!(policy.event_allowed(&user, subscribe, "media", "", ""));
        assert!(policy.event_allowed(&user, Direction::Send, "media", "s", "s"));
        assert!(!policy.event_allowed(&user, subscribe, "media", "other", ""));
    }

    #[test]
    fn configured_roles_combine() {
        let policy = Policy::from_toml(
            r#"
            [roles."*"]
            commands = ["event/*", "core/ping"]
            subscribe = ["*", "!secret"]
            send = ["chat"]

            [roles.operator]
            commands = ["user/list", "session/stop"]
            other_users = true
            subscribe = ["secret"]

            [roles.auditor]
            commands = ["session/cmd"]
            "#,
        )
        .expect("valid policy");
        let plain = roles(&[]);
        let operator = roles(&["operator"]);
        let auditor = roles(&["auditor", "unknown-role"]);
        assert_eq!(
            policy.command_access(&plain, "user", "list"),
            Access::Denied
        );
        assert_eq!(
            policy.command_access(&operator, "user", "list"),
            Access::Allowed
        );
        assert_eq!(
            policy.command_access(&plain, "event", "get_subscriptions"),
            Access::Allowed,
            "subclass/* pattern"
        );
        assert_eq!(
            policy.command_access(&operator, "session", "stop"),
            Access::Allowed,
            "other_users lifts the own-user restriction"
        );
        assert_eq!(
            policy.command_access(&auditor, "session", "cmd"),
            Access::OwnUserOnly
        );
        assert_eq!(
            policy.command_access(&roles(&["admin"]), "user", "list"),
            Access::Denied,
            "a configured policy replaces the default, admin included"
        );
        let subscribe = Direction::Subscribe;
        assert!(!policy.event_allowed(&plain, subscribe, "secret", "", ""));
        assert!(policy.event_allowed(&plain, subscribe, "news", "", ""));
        assert!(
            policy.event_allowed(&operator, subscribe, "secret", "", ""),
            "the operator role grants what everyone's rules exclude"
        );
        assert!(policy.event_allowed(&plain, Direction::Send, "chat", "", ""));
        assert!(!policy.event_allowed(&plain, Direction::Send, "news", "", ""));
    }

    #[test]
    fn bad_policies_are_refused() {
        assert!(Policy::from_toml("[roles.x]\ncommands = [\"user/nope\"]").is_err());
        assert!(Policy::from_toml("[roles.x]\ncommand = [\"*\"]").is_err());
        assert!(Policy::from_toml("[roles.x]\nother_users = \"yes\"").is_err());
        assert!(
            Policy::from_toml("").is_ok(),
            "an empty policy denies everything"
        );
    }
}
