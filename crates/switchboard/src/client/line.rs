//! What a person types into `switchboard client`, turned into frames:
//! `SUBCLASS CMD [POSITIONAL…] [key=value…] [{JSON}]`, a raw JSON frame, or `reply`/`fail`/`ack`
//! to answer a server request.

use serde_json::{Map, Value, json};

/// The `core` commands, by subclass, with the fields their positional words fill in.
pub(super) const COMMANDS: &[(&str, &str, &[&str])] = &[
    ("user", "login", &["user", "password"]),
    ("user", "list", &[]),
    ("user", "get", &["user"]),
    ("user", "send_event", &["user", "type"]),
    ("session", "stop", &["session_id"]),
    ("session", "send_event", &["session_id", "type"]),
    ("session", "cmd", &["session_id", "class", "cmd"]),
    ("session", "log", &["source", "message"]),
    ("session", "ping", &[]),
    (
        "event",
        "subscribe",
        &["class", "subclass", "type", "obj_id"],
    ),
    (
        "event",
        "unsubscribe",
        &["class", "subclass", "type", "obj_id"],
    ),
    ("event", "get_subscriptions", &[]),
    (
        "event",
        "send_event",
        &["class", "subclass", "type", "obj_id"],
    ),
];

/// Words the client itself understands.
pub(super) const LOCAL_WORDS: &[&str] = &["reply", "fail", "ack", "help", "quit"];

/// What a line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// Nothing (blank).
    Empty,
    /// A frame to send.
    Send(Value),
    /// Print the help.
    Help,
    /// End the session.
    Quit,
}

/// The help text.
pub const HELP: &str = "\
commands: SUBCLASS CMD [WORDS…] [key=value…] [{JSON}]
  user list | user get USER | user send_event USER [TYPE] [body={…}]
  session ping | session stop ID | session send_event ID [TYPE] [{body}]
  session cmd ID CLASS CMD [key=value…]      (the pairs and {JSON} become its data)
  session log SOURCE MESSAGE [level=3]
  event subscribe CLASS [SUBCLASS TYPE OBJ_ID] [recover=true] [{body}]
  event unsubscribe CLASS [SUBCLASS TYPE OBJ_ID] | event get_subscriptions
  event send_event CLASS [SUBCLASS TYPE OBJ_ID] [{body}]
  {\"class\": …}                               a raw frame (a tid is added when missing)
  reply TID [{data}] | fail TID CODE [MESSAGE] | ack TID    answer a server request
  help | quit
values are JSON when they parse (1, true, {…}), text otherwise; quote words with spaces.";

/// Splits a line into words: whitespace apart, except inside "quotes" or a {JSON} object.
///
/// # Errors
/// An unclosed quote or brace.
pub(super) fn words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        let (mut depth, mut quoted, mut escaped) = (0usize, false, false);
        // A word that starts with `"` is text without its quotes; one holding `{` runs to
        // its closing brace, strings inside included.
        let text_quote = c == '"';
        if text_quote {
            chars.next();
        }
        while let Some(&c) = chars.peek() {
            if text_quote {
                chars.next();
                if escaped {
                    word.push(c);
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    quoted = true;
                    break;
                } else {
                    word.push(c);
                }
                continue;
            }
            if depth == 0 && c.is_whitespace() {
                break;
            }
            chars.next();
            word.push(c);
            if quoted {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    quoted = false;
                }
            } else if c == '"' && depth > 0 {
                quoted = true;
            } else if c == '{' || c == '[' {
                depth += 1;
            } else if (c == '}' || c == ']') && depth > 0 {
                depth -= 1;
            }
        }
        if text_quote && !quoted {
            return Err("a quote is not closed".into());
        }
        if depth > 0 {
            return Err("a brace is not closed".into());
        }
        words.push(word);
    }
    Ok(words)
}

/// A value as typed: JSON when it parses, text otherwise.
fn value_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// A tid as typed: a number when it is one.
fn tid_of(text: &str) -> Value {
    text.parse::<u64>()
        .map_or_else(|_| Value::String(text.to_owned()), Value::from)
}

/// Reads one line; `tid` numbers a request that has none.
///
/// # Errors
/// Says what is wrong with the line.
pub fn parse(line: &str, tid: u64) -> Result<Line, String> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(Line::Empty);
    }
    if trimmed.starts_with('{') {
        let mut frame: Value =
            serde_json::from_str(trimmed).map_err(|error| format!("not JSON: {error}"))?;
        let object = frame
            .as_object_mut()
            .ok_or_else(|| "a frame is a JSON object".to_owned())?;
        if object.contains_key("cmd") && !object.contains_key("tid") {
            object.insert("tid".into(), tid.into());
        }
        return Ok(Line::Send(frame));
    }
    let words = words(trimmed)?;
    let rest = &words[1..];
    match words[0].as_str() {
        "help" | "?" => return Ok(Line::Help),
        "quit" | "exit" => return Ok(Line::Quit),
        "reply" => {
            let [answered, data @ ..] = rest else {
                return Err("reply TID [{data}]".into());
            };
            let data = data.first().map_or_else(|| json!({}), |d| value_of(d));
            return Ok(Line::Send(
                json!({"result": "ok", "data": data, "tid": tid_of(answered)}),
            ));
        }
        "fail" => {
            let [answered, code, message @ ..] = rest else {
                return Err("fail TID CODE [MESSAGE]".into());
            };
            let message = if message.is_empty() {
                code.clone()
            } else {
                message.join(" ")
            };
            return Ok(Line::Send(json!({"result": "error",
                "data": {"code": code, "error": message}, "tid": tid_of(answered)})));
        }
        "ack" => {
            let [answered] = rest else {
                return Err("ack TID".into());
            };
            return Ok(Line::Send(json!({"ack": tid_of(answered)})));
        }
        _ => {}
    }
    let [subclass, cmd, args @ ..] = words.as_slice() else {
        return Err(format!(
            "`{}` needs a command: try `help`",
            words.first().map_or("", String::as_str)
        ));
    };
    let positional_fields = COMMANDS
        .iter()
        .find(|(s, c, _)| s == subclass && c == cmd)
        .map_or(&[][..], |(_, _, fields)| *fields);
    let mut data = Map::new();
    // session cmd: the target's request data collects what is not the command's own.
    let nested = subclass == "session" && cmd == "cmd";
    let mut inner = Map::new();
    let mut positional = positional_fields.iter();
    for arg in args {
        if arg.starts_with('{') {
            let Value::Object(object) = value_of(arg) else {
                return Err(format!("not a JSON object: {arg}"));
            };
            let target = if nested {
                &mut inner
            } else if subclass == "event" || cmd == "send_event" {
                data.entry("body").or_insert_with(|| json!({}));
                data.get_mut("body")
                    .and_then(Value::as_object_mut)
                    .ok_or_else(|| "body is not an object".to_owned())?
            } else {
                &mut data
            };
            target.extend(object);
        } else if let Some((key, value)) = arg.split_once('=')
            && !key.is_empty()
            && !key.contains(' ')
        {
            let own = ["session_id", "class", "subclass", "cmd", "data"].contains(&key);
            if nested && !own {
                inner.insert(key.to_owned(), value_of(value));
            } else {
                data.insert(key.to_owned(), value_of(value));
            }
        } else if let Some(field) = positional.next() {
            data.insert((*field).to_owned(), Value::String(arg.clone()));
        } else {
            return Err(format!(
                "`{arg}`: {subclass} {cmd} takes {} word(s) here; use key=value",
                positional_fields.len()
            ));
        }
    }
    if nested && !inner.is_empty() {
        data.insert("data".into(), Value::Object(inner));
    }
    Ok(Line::Send(json!({
        "class": "core",
        "subclass": subclass,
        "cmd": cmd,
        "data": data,
        "tid": tid,
    })))
}

/// The words that may follow what is typed so far (`user l` → `list`).
pub(super) fn completions(before_cursor: &str) -> (usize, Vec<String>) {
    let start = before_cursor
        .rfind(char::is_whitespace)
        .map_or(0, |at| at + 1);
    let typed = &before_cursor[start..];
    let earlier: Vec<&str> = before_cursor[..start].split_whitespace().collect();
    let candidates: Vec<String> = match earlier.as_slice() {
        [] => {
            let mut first: Vec<&str> = COMMANDS.iter().map(|(s, _, _)| *s).collect();
            first.dedup();
            first.extend(LOCAL_WORDS);
            first.into_iter().map(str::to_owned).collect()
        }
        [subclass] => COMMANDS
            .iter()
            .filter(|(s, _, _)| s == subclass)
            .map(|(_, c, _)| (*c).to_owned())
            .collect(),
        _ => Vec::new(),
    };
    (
        start,
        candidates
            .into_iter()
            .filter(|candidate| candidate.starts_with(typed))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(line: &str) -> Value {
        match parse(line, 7) {
            Ok(Line::Send(frame)) => frame,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn commands_become_requests() {
        assert_eq!(
            frame("user list"),
            json!({"class": "core", "subclass": "user", "cmd": "list", "data": {}, "tid": 7})
        );
        assert_eq!(frame("user get alice")["data"], json!({"user": "alice"}));
        assert_eq!(
            frame(r#"event subscribe media call started recover=true {"k": "v w"}"#)["data"],
            json!({"class": "media", "subclass": "call", "type": "started",
                   "recover": true, "body": {"k": "v w"}})
        );
        assert_eq!(
            frame("event subscribe class=media type=started")["data"],
            json!({"class": "media", "type": "started"})
        );
        assert_eq!(
            frame(r#"session cmd s1 app status verbose=true {"n": 1}"#)["data"],
            json!({"session_id": "s1", "class": "app", "cmd": "status",
                   "data": {"verbose": true, "n": 1}})
        );
        assert_eq!(
            frame(r#"session log web "it broke" level=3"#)["data"],
            json!({"source": "web", "message": "it broke", "level": 3})
        );
    }

    #[test]
    fn raw_frames_and_answers() {
        assert_eq!(
            frame(r#"{"class": "core", "subclass": "session", "cmd": "ping"}"#)["tid"],
            7
        );
        assert_eq!(
            frame(r#"reply 3 {"ok": 1}"#),
            json!({"result": "ok", "data": {"ok": 1}, "tid": 3})
        );
        assert_eq!(
            frame("fail 4 unauthorized not now"),
            json!({"result": "error", "data": {"code": "unauthorized", "error": "not now"}, "tid": 4})
        );
        assert_eq!(frame("ack 5"), json!({"ack": 5}));
        assert_eq!(parse("  ", 1), Ok(Line::Empty));
        assert_eq!(parse("quit", 1), Ok(Line::Quit));
    }

    #[test]
    fn mistakes_are_named() {
        assert!(parse("user", 1).unwrap_err().contains("needs a command"));
        assert!(parse("user get a b", 1).unwrap_err().contains("key=value"));
        assert!(
            parse(r#"event send_event x {"a": 1"#, 1)
                .unwrap_err()
                .contains("brace")
        );
        assert!(
            parse(r#"session log "open"#, 1)
                .unwrap_err()
                .contains("quote")
        );
        assert!(parse("{nope", 1).unwrap_err().contains("not JSON"));
        assert!(parse("reply", 1).unwrap_err().contains("reply TID"));
    }

    #[test]
    fn completion_offers_subclasses_then_commands() {
        assert_eq!(completions("us"), (0, vec!["user".to_owned()]));
        let (start, words) = completions("event sub");
        assert_eq!(start, 6);
        assert_eq!(words, ["subscribe"]);
        assert!(completions("user get al").1.is_empty());
    }
}
