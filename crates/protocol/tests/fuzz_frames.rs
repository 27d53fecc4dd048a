//! Property tests: arbitrary bytes and arbitrary JSON never panic the frame parser or the field
//! validator, and every rejection carries a documented error code.

use proptest::prelude::*;
use serde_json::{Map, Value};
use switchboard_protocol::ErrorCode;
use switchboard_protocol::fields::Fields;
use switchboard_protocol::frame::{DEFAULT_MAX_DEPTH, Inbound, decode};

const FRAME_CODES: [ErrorCode; 5] = [
    ErrorCode::InvalidJson,
    ErrorCode::InvalidFrame,
    ErrorCode::MissingField,
    ErrorCode::SyntaxError,
    ErrorCode::LimitExceeded,
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("class"),
            Just("cmd"),
            Just("tid"),
            Just("core"),
            Just("*")
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("class".to_owned()),
                    Just("subclass".to_owned()),
                    Just("cmd".to_owned()),
                    Just("data".to_owned()),
                    Just("tid".to_owned()),
                    Just("result".to_owned()),
                    Just("ack".to_owned()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..7
            )
            .prop_map(|map| Value::Object(map.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,300}") {
        if let Err(rejected) = decode(&text, DEFAULT_MAX_DEPTH) {
            prop_assert!(FRAME_CODES.contains(&rejected.error.code));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(rejected) = decode(&text, DEFAULT_MAX_DEPTH) {
            prop_assert!(FRAME_CODES.contains(&rejected.error.code));
        }
    }

    #[test]
    fn arbitrary_json_is_classified(value in json_value()) {
        match decode(&value.to_string(), DEFAULT_MAX_DEPTH) {
            Ok(Inbound::Request(request)) => {
                prop_assert!(value.get("tid").is_some_and(|t| t.is_number() || t.is_string()));
                prop_assert_eq!(Some(&Value::String(request.cmd.clone())), value.get("cmd"));
                // The validator never panics on any data either.
                let fields = Fields(&request.data);
                for name in ["user", "class", "session_id", "body", "level"] {
                    let checks = [
                        fields.required_str(name).err(),
                        fields.optional_object(name).err(),
                        fields.int_or(name, 0..=7, 1).err(),
                    ];
                    for error in checks.into_iter().flatten() {
                        prop_assert!(matches!(error.code, ErrorCode::MissingField | ErrorCode::SyntaxError));
                    }
                }
            }
            Ok(Inbound::Response(_)) => prop_assert!(value.get("result").is_some()),
            Ok(Inbound::Ack(_)) => prop_assert!(value.get("ack").is_some()),
            Err(rejected) => {
                prop_assert!(FRAME_CODES.contains(&rejected.error.code));
                if !value.is_object() {
                    prop_assert_eq!(rejected.error.code, ErrorCode::InvalidJson);
                }
            }
        }
    }
}
