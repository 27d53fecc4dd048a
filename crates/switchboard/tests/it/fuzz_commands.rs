//! Arbitrary `data` thrown at every command over a real connection, as an admin and as a plain
//! user: every answer is `ok` or a documented error code with the request's tid, and the
//! connection keeps working.

use std::cell::RefCell;

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use switchboard_protocol::policy::COMMANDS;

/// The codes of PROTOCOL.md §3.
const DOCUMENTED: &[&str] = &[
    "invalid_json",
    "invalid_frame",
    "missing_field",
    "syntax_error",
    "unknown_command",
    "not_authenticated",
    "already_authenticated",
    "invalid_credentials",
    "too_many_attempts",
    "duplicated_session_id",
    "unauthorized",
    "user_not_found",
    "session_not_found",
    "session_stopped",
    "timeout",
    "limit_exceeded",
    "unavailable",
    "internal_error",
];

fn field_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        ".{0,10}".prop_map(Value::String),
        prop_oneof![
            Just("*"),
            Just("admin"),
            Just("media"),
            Just("core"),
            Just("")
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn data() -> impl Strategy<Value = Map<String, Value>> {
    let names = prop_oneof![
        Just("user"),
        Just("password"),
        Just("session_id"),
        Just("type"),
        Just("body"),
        Just("class"),
        Just("subclass"),
        Just("cmd"),
        Just("data"),
        Just("obj_id"),
        Just("service"),
        Just("source"),
        Just("message"),
        Just("level"),
        Just("meta"),
    ];
    prop::collection::btree_map(names.prop_map(str::to_owned), field_value(), 0..6)
        .prop_map(|map| map.into_iter().collect())
}

#[test]
fn arbitrary_data_gets_documented_answers() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let running = runtime.block_on(crate::common::start_with(|config| {
        config.gateway.cmd_timeout = std::time::Duration::from_millis(200);
    }));
    let admin = runtime.block_on(crate::common::Client::admin(&running));
    let alice = runtime.block_on(crate::common::Client::login_to(
        &running, 0, "alice", "alice-pw",
    ));
    let own_sessions = [admin.session_id.clone(), alice.session_id.clone()];
    let clients = RefCell::new((admin, alice));
    let config = ProptestConfig::with_cases(300);
    proptest!(config, |(command in 0..COMMANDS.len(), data in data(), as_admin in any::<bool>())| {
        let (subclass, cmd) = COMMANDS[command];
        // Stopping one's own connection would end the run, not test the validator.
        prop_assume!(!data.get("session_id").and_then(Value::as_str).is_some_and(|id| own_sessions.iter().any(|own| own == id)));
        let mut clients = clients.borrow_mut();
        let client = if as_admin { &mut clients.0 } else { &mut clients.1 };
        let reply = runtime.block_on(client.request(subclass, cmd, Value::Object(data.clone())));
        match reply["result"].as_str() {
            Some("ok") => {}
            Some("error") => {
                let code = reply["data"]["code"].as_str().unwrap_or_default();
                prop_assert!(DOCUMENTED.contains(&code), "{subclass} {cmd} {data:?}: {reply}");
                prop_assert!(reply["data"]["error"].is_string(), "{reply}");
            }
            _ => prop_assert!(false, "{subclass} {cmd} {data:?}: {reply}"),
        }
    });
    // Both connections survived everything.
    let (mut admin, mut alice) = clients.into_inner();
    runtime.block_on(async {
        admin.ok("session", "ping", json!({})).await;
        alice.ok("session", "ping", json!({})).await;
        running.stop().await;
    });
}
