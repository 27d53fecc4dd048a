//! Inbound frame decoding and outbound frame encoding (PROTOCOL.md §2).

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use crate::error::{ApiError, ErrorCode};

/// Default maximum JSON nesting depth of an inbound frame.
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// A decoded inbound frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// A request `{class, subclass, cmd, data, tid}`.
    Request(Request),
    /// A response to a request the server sent (`session cmd`) or to an event.
    Response(Response),
    /// `{"ack": tid}`: the client needs longer to answer server request `tid`.
    Ack(Value),
}

/// A client request with defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// `class`, e.g. `"core"`.
    pub class: String,
    /// `subclass`, `"core"` when absent.
    pub subclass: String,
    /// `cmd`.
    pub cmd: String,
    /// `data`, `{}` when absent.
    pub data: Map<String, Value>,
    /// `tid`, a JSON number or string, echoed verbatim.
    pub tid: Value,
}

/// A client's answer to a server request.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The server request's tid.
    pub tid: Value,
    /// `result == "ok"`.
    pub ok: bool,
    /// `data`, `null` when absent.
    pub data: Value,
}

/// Why an inbound frame was rejected, with the request's `tid` when one could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    /// The answer to send.
    pub error: ApiError,
    /// The tid to echo, if the frame had a usable one.
    pub tid: Option<Value>,
}

impl FrameError {
    fn new(error: ApiError, tid: Option<Value>) -> Self {
        Self { error, tid }
    }
}

/// Decodes one text frame.
///
/// # Errors
/// Returns the documented answer: `limit_exceeded` past `max_depth` nesting, `invalid_json`
/// for anything but a JSON object, `missing_field`/`syntax_error` for a malformed request and
/// `invalid_frame` for an object that is neither request, response nor ack.
pub fn decode(text: &str, max_depth: usize) -> Result<Inbound, FrameError> {
    if nesting_depth_exceeds(text.as_bytes(), max_depth) {
        return Err(FrameError::new(
            ApiError::new(
                ErrorCode::LimitExceeded,
                format!("JSON nesting deeper than {max_depth}"),
            ),
            None,
        ));
    }
    let value: Value = serde_json::from_str(text).map_err(|err| {
        FrameError::new(
            ApiError::new(ErrorCode::InvalidJson, format!("invalid JSON: {err}")),
            None,
        )
    })?;
    let Value::Object(mut object) = value else {
        return Err(FrameError::new(
            ApiError::new(ErrorCode::InvalidJson, "frame is not a JSON object"),
            None,
        ));
    };
    if let Some(ack) = object.remove("ack") {
        return if is_tid(&ack) {
            Ok(Inbound::Ack(ack))
        } else {
            Err(FrameError::new(
                ApiError::syntax("ack", "a number or a string"),
                None,
            ))
        };
    }
    let tid = object.remove("tid");
    if let Some(result) = object.remove("result") {
        let Some(tid) = tid else {
            return Err(FrameError::new(ApiError::missing_field("tid"), None));
        };
        let ok = result.as_str() == Some("ok");
        let data = object.remove("data").unwrap_or(Value::Null);
        return Ok(Inbound::Response(Response { tid, ok, data }));
    }
    if !object.contains_key("class") && !object.contains_key("cmd") {
        return Err(FrameError::new(
            ApiError::new(
                ErrorCode::InvalidFrame,
                "frame is neither a request, a response nor an ack",
            ),
            tid,
        ));
    }
    let Some(tid) = tid else {
        return Err(FrameError::new(ApiError::missing_field("tid"), None));
    };
    if !is_tid(&tid) {
        return Err(FrameError::new(
            ApiError::syntax("tid", "a number or a string"),
            Some(tid),
        ));
    }
    let fail = |error: ApiError, tid: &Value| FrameError::new(error, Some(tid.clone()));
    let class = required_string(&mut object, "class").map_err(|e| fail(e, &tid))?;
    let cmd = required_string(&mut object, "cmd").map_err(|e| fail(e, &tid))?;
    let subclass = match object.remove("subclass") {
        None | Some(Value::Null) => "core".to_owned(),
        Some(Value::String(subclass)) => subclass,
        Some(_) => return Err(fail(ApiError::syntax("subclass", "a string"), &tid)),
    };
    let data = match object.remove("data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(data)) => data,
        Some(_) => return Err(fail(ApiError::syntax("data", "an object"), &tid)),
    };
    Ok(Inbound::Request(Request {
        class,
        subclass,
        cmd,
        data,
        tid,
    }))
}

fn required_string(object: &mut Map<String, Value>, field: &str) -> Result<String, ApiError> {
    match object.remove(field) {
        None | Some(Value::Null) => Err(ApiError::missing_field(field)),
        Some(Value::String(value)) => Ok(value),
        Some(_) => Err(ApiError::syntax(field, "a string")),
    }
}

fn is_tid(value: &Value) -> bool {
    matches!(value, Value::Number(_) | Value::String(_))
}

/// Tells whether arrays/objects in `bytes` nest deeper than `max_depth`, without parsing.
///
/// Brackets inside strings are skipped; malformed input is left to the JSON parser.
fn nesting_depth_exceeds(bytes: &[u8], max_depth: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Encodes an ok response.
pub fn ok_response(tid: &Value, data: Value) -> String {
    json!({"result": "ok", "data": data, "tid": tid}).to_string()
}

/// Encodes an error response; `tid` is left out when the request had none.
pub fn error_response(tid: Option<&Value>, error: &ApiError) -> String {
    error_response_with_data(tid, error.to_data())
}

/// Encodes an error response whose `data` is given as is (a forwarded `session cmd` error).
pub fn error_response_with_data(tid: Option<&Value>, data: Value) -> String {
    match tid {
        Some(tid) => json!({"result": "error", "data": data, "tid": tid}).to_string(),
        None => json!({"result": "error", "data": data}).to_string(),
    }
}

/// Encodes a server request (`session cmd` towards its target), leaving out `subclass` when `core`.
pub fn server_request(class: &str, subclass: &str, cmd: &str, data: &Value, tid: u64) -> String {
    let mut frame = Map::new();
    frame.insert("class".into(), class.into());
    if subclass != "core" {
        frame.insert("subclass".into(), subclass.into());
    }
    frame.insert("cmd".into(), cmd.into());
    frame.insert("data".into(), data.clone());
    frame.insert("tid".into(), tid.into());
    Value::Object(frame).to_string()
}

/// Encodes an event frame from the already-encoded `data` object.
///
/// The data is serialised once per event and subscription body; only the tid differs per frame.
pub fn event_frame(tid: u64, data_json: &str) -> String {
    positioned_event_frame(tid, data_json, None)
}

/// An event frame whose `data` is `data_json`, with `pos` (PROTOCOL.md §10) when given.
pub fn positioned_event_frame(tid: u64, data_json: &str, pos_json: Option<&str>) -> String {
    let mut frame = String::with_capacity(data_json.len() + 48);
    frame.push_str("{\"class\":\"core\",\"cmd\":\"event\",\"tid\":");
    // Written in place: no temporary string per delivery.
    let _ = write!(frame, "{tid}");
    frame.push_str(",\"data\":");
    frame.push_str(data_json);
    if let Some(pos) = pos_json {
        frame.push_str(",\"pos\":");
        frame.push_str(pos);
    }
    frame.push('}');
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_err(text: &str) -> FrameError {
        decode(text, DEFAULT_MAX_DEPTH).expect_err("frame should be rejected")
    }

    #[test]
    fn request_defaults() {
        let Ok(Inbound::Request(request)) =
            decode(r#"{"class":"core","cmd":"ping","tid":"a"}"#, 64)
        else {
            panic!("request expected");
        };
        assert_eq!(request.subclass, "core");
        assert!(request.data.is_empty());
        assert_eq!(request.tid, json!("a"));
    }

    #[test]
    fn errors_carry_tid_when_known() {
        let err = decode_err(r#"{"class":1,"cmd":"x","tid":3}"#);
        assert_eq!(err.error.code, ErrorCode::SyntaxError);
        assert_eq!(err.tid, Some(json!(3)));
        let err = decode_err(r#"{"class":"core","tid":3}"#);
        assert_eq!(err.error.code, ErrorCode::MissingField);
        assert!(err.error.message.contains("cmd"));
        let err = decode_err(r#"{"class":"core","cmd":"x"}"#);
        assert_eq!(err.error.code, ErrorCode::MissingField);
        assert!(err.error.message.contains("tid"));
        assert_eq!(err.tid, None);
        let err = decode_err(r#"{"class":"core","cmd":"x","data":[1],"tid":1}"#);
        assert_eq!(err.error.code, ErrorCode::SyntaxError);
    }

    #[test]
    fn not_an_object() {
        assert_eq!(decode_err("[1,2]").error.code, ErrorCode::InvalidJson);
        assert_eq!(decode_err("{nope").error.code, ErrorCode::InvalidJson);
        assert_eq!(decode_err(r#"{"x":1}"#).error.code, ErrorCode::InvalidFrame);
    }

    #[test]
    fn depth_limit_ignores_brackets_in_strings() {
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert_eq!(decode_err(&deep).error.code, ErrorCode::LimitExceeded);
        let text = format!(
            r#"{{"class":"core","cmd":"x","tid":1,"data":{{"s":"{}"}}}}"#,
            "[".repeat(100)
        );
        assert!(decode(&text, 64).is_ok());
    }

    #[test]
    fn response_and_ack() {
        assert_eq!(decode(r#"{"ack":5}"#, 64), Ok(Inbound::Ack(json!(5))));
        let Ok(Inbound::Response(response)) =
            decode(r#"{"result":"error","data":{"code":"x"},"tid":2}"#, 64)
        else {
            panic!("response expected");
        };
        assert!(!response.ok);
    }

    #[test]
    fn event_frame_is_json() {
        let frame = event_frame(7, r#"{"class":"a"}"#);
        let value: Value = serde_json::from_str(&frame).expect("valid json");
        assert_eq!(value["tid"], 7);
        assert_eq!(value["data"]["class"], "a");
    }
}
