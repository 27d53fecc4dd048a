//! `switchboard client`, the binary, driven through its standard input and output as a script
//! or a person at a pipe would, against real services.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::common::{ADMIN_PASSWORD, Client, WAIT, start};

struct Terminal {
    child: Child,
    input: Option<ChildStdin>,
    output: Lines<BufReader<ChildStdout>>,
}

impl Terminal {
    fn start(url: &str, extra: &[&str]) -> Terminal {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["client", url, "--user", "admin"])
            .args(extra)
            .env("SWITCHBOARD_CLIENT_PASSWORD", ADMIN_PASSWORD)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("switchboard client starts");
        let input = child.stdin.take();
        let output = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Terminal {
            child,
            input,
            output,
        }
    }

    async fn type_line(&mut self, line: &str) {
        let input = self.input.as_mut().expect("input open");
        input
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write");
        input.flush().await.expect("flush");
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(WAIT, self.output.next_line())
            .await
            .expect("a line in time")
            .expect("read")
            .expect("a line, not the end")
    }

    async fn frame(&mut self) -> Value {
        let line = self.line().await;
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("one JSON frame per line: {line}"))
    }

    /// Ends the input; the process exits once every answer came. Its success, the lines
    /// not read yet and its standard error.
    async fn finish(mut self) -> (bool, Vec<String>, String) {
        use tokio::io::AsyncReadExt;
        drop(self.input.take());
        let mut rest = Vec::new();
        while let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_secs(15), self.output.next_line()).await
        {
            rest.push(line);
        }
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("exits in time")
            .expect("status");
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr).await;
        }
        (status.success(), rest, stderr)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_mode_is_one_frame_per_line_both_ways() {
    let running = start().await;
    let mut terminal = Terminal::start(&running.ws_url(0), &["--json"]);
    let login = terminal.frame().await;
    assert_eq!(login["result"], "ok", "{login}");
    let session = login["data"]["session_id"]
        .as_str()
        .expect("session id")
        .to_owned();

    terminal
        .type_line(r#"{"class":"core","subclass":"event","cmd":"subscribe","data":{"class":"cli"},"tid":"s1"}"#)
        .await;
    assert_eq!(
        terminal.frame().await,
        json!({"result": "ok", "data": {}, "tid": "s1"})
    );
    // Events arrive as frames, as the server sent them.
    let mut other = Client::admin(&running).await;
    other
        .ok(
            "event",
            "send_event",
            json!({"class": "cli", "type": "hello", "body": {"n": 1}}),
        )
        .await;
    let event = terminal.frame().await;
    assert_eq!(event["cmd"], "event");
    assert_eq!(event["data"]["body"], json!({"n": 1}));

    // A server request is printed as a frame; a typed reply answers it.
    other
        .send_json(
            &json!({"class": "core", "subclass": "session", "cmd": "cmd", "tid": 9,
            "data": {"session_id": session, "class": "app", "cmd": "status"}}),
        )
        .await;
    let request = terminal.frame().await;
    assert_eq!(request["cmd"], "status");
    terminal
        .type_line(&format!(r#"reply {} {{"up": true}}"#, request["tid"]))
        .await;
    let answer = other.response_for(json!(9)).await;
    assert_eq!(answer["data"], json!({"up": true}), "{answer}");

    // Words work here too; a mistake is a JSON error line and the session goes on.
    terminal.type_line("user get a b").await;
    assert!(terminal.frame().await["error"].is_string());
    terminal.type_line("session ping").await;
    let ping = terminal.frame().await;
    assert_eq!(ping["result"], "ok");
    assert!(ping["data"]["now"].is_u64());

    // The end of the input waits for the answers, then the client leaves.
    terminal.type_line("user list").await;
    let (ok, rest, stderr) = terminal.finish().await;
    assert!(ok, "{rest:?} {stderr}");
    let list: Value = serde_json::from_str(rest.last().expect("the list")).expect("JSON");
    assert!(
        list["data"]["admin"]
            .as_array()
            .is_some_and(|ids| ids.contains(&json!(session))),
        "{list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn words_at_a_pipe_print_answers_and_events_for_people() {
    let running = start().await;
    let mut terminal = Terminal::start(&running.ws_url(0), &[]);
    assert!(
        terminal
            .line()
            .await
            .starts_with("logged in as admin, session ")
    );
    terminal
        .type_line("event subscribe media type=started")
        .await;
    assert!(terminal.line().await.starts_with("ok #1"));
    let mut other = Client::admin(&running).await;
    other
        .ok(
            "event",
            "send_event",
            json!({"class": "media", "type": "started", "obj_id": "c1", "body": {"by": "x"}}),
        )
        .await;
    assert_eq!(
        terminal.line().await,
        r#"event media/*/started/c1 {"by":"x"}"#
    );
    terminal.type_line("session stop nobody").await;
    assert_eq!(
        terminal.line().await,
        "error #2 session_not_found: session not found"
    );
    terminal.type_line("event subscribe").await;
    let refused = terminal.line().await;
    assert!(refused.starts_with("error #3 missing_field"), "{refused}");
    terminal.type_line("user get a b").await;
    assert!(terminal.line().await.starts_with("? "));
    terminal.type_line("help").await;
    assert!(terminal.line().await.starts_with("commands:"));
    let (ok, _, stderr) = terminal.finish().await;
    assert!(ok, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_fails_with_its_code() {
    let running = start().await;
    let terminal = Terminal::start(&running.ws_url(0), &["--password", "wrong"]);
    let (ok, _, stderr) = terminal.finish().await;
    assert!(!ok);
    assert!(
        stderr.contains("login refused: invalid_credentials"),
        "{stderr}"
    );
}
