//! `switchboard client`: a terminal client of the WebSocket protocol, for people (commands as
//! words, with history and completion, events printed as they come) and for scripts
//! (`--json`: one frame per line in, one per line out).

mod line;

use std::collections::HashSet;
use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

pub use line::{HELP, Line, parse};

/// How long, after the input ends, answers still awaited are waited for.
const DRAIN: Duration = Duration::from_secs(10);

/// Where to connect and how to log in.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The gateway's WebSocket URL.
    #[arg(default_value = "ws://127.0.0.1:9010/api/ws")]
    pub url: String,
    /// Log in as this user first (else send `user login` yourself).
    #[arg(long, short)]
    pub user: Option<String>,
    /// The password or token for `--user`.
    #[arg(long, env = "SWITCHBOARD_CLIENT_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// One JSON frame per line on standard input and output, nothing else.
    #[arg(long)]
    pub json: bool,
}

/// An input line, or its end.
enum Input {
    Line(String),
    End,
}

/// Where printed text goes: above the prompt when there is one.
type Printer = Box<dyn FnMut(String) + Send>;

/// Runs the client until the input ends (and every answer awaited came) or the server closes.
///
/// # Errors
/// When the connection cannot be made or the login is refused.
pub async fn run(args: ClientArgs) -> anyhow::Result<()> {
    let (socket, _) = tokio_tungstenite::connect_async(args.url.as_str())
        .await
        .with_context(|| format!("cannot connect to {}", args.url))?;
    let (mut sink, mut stream) = socket.split();
    let interactive = !args.json && std::io::stdin().is_terminal();
    let (inputs_tx, mut inputs) = mpsc::channel::<Input>(64);
    let mut print = start_input(interactive, inputs_tx)?;
    let mut next_tid: u64 = 1;
    let mut awaited: HashSet<String> = HashSet::new();

    if let Some(user) = &args.user {
        let login = json!({"class": "core", "subclass": "user", "cmd": "login", "tid": 0,
            "data": {"user": user, "password": args.password.clone().unwrap_or_default()}});
        sink.send(Message::text(login.to_string())).await?;
        let answer = loop {
            match stream.next().await {
                Some(Ok(Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    if frame.get("tid") == Some(&json!(0)) && frame.get("result").is_some() {
                        break frame;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error.into()),
                None => anyhow::bail!("the server closed the connection during login"),
            }
        };
        if args.json {
            print(answer.to_string());
        }
        anyhow::ensure!(
            answer["result"] == "ok",
            "login refused: {}",
            answer["data"]["code"].as_str().unwrap_or("error")
        );
        if !args.json {
            print(format!(
                "logged in as {user}, session {}  (help: commands)",
                answer["data"]["session_id"].as_str().unwrap_or("?")
            ));
        }
    }

    let mut ended = false;
    let drain = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(drain);
    loop {
        if ended && awaited.is_empty() {
            let _ = sink.send(Message::Close(None)).await;
            return Ok(());
        }
        tokio::select! {
            input = inputs.recv(), if !ended => match input {
                Some(Input::Line(text)) => match parse(&text, next_tid) {
                    Ok(Line::Send(frame)) => {
                        next_tid += 1;
                        if frame.get("cmd").is_some() && let Some(tid) = frame.get("tid") {
                            awaited.insert(tid.to_string());
                        }
                        sink.send(Message::text(frame.to_string())).await?;
                    }
                    Ok(Line::Empty) => {}
                    Ok(Line::Help) => print(HELP.to_owned()),
                    Ok(Line::Quit) => {
                        ended = true;
                        awaited.clear();
                    }
                    Err(error) if args.json => print(json!({"error": error}).to_string()),
                    Err(error) => print(format!("? {error}")),
                },
                Some(Input::End) | None => {
                    ended = true;
                    drain.as_mut().reset(tokio::time::Instant::now() + DRAIN);
                }
            },
            message = stream.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    if frame.get("result").is_some()
                        && let Some(tid) = frame.get("tid")
                    {
                        awaited.remove(&tid.to_string());
                    }
                    print(if args.json { text.to_string() } else { describe(&frame, &text) });
                }
                Some(Ok(Message::Close(close))) => {
                    let (code, reason) = close
                        .map(|c| (u16::from(c.code), c.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    if args.json {
                        print(json!({"closed": code, "reason": reason}).to_string());
                    } else {
                        print(format!("closed by the server: {code} {reason}"));
                    }
                    anyhow::ensure!(ended || code == 1000, "closed with {code}");
                    return Ok(());
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error.into()),
                None => anyhow::bail!("the connection ended"),
            },
            () = &mut drain, if ended => {
                anyhow::bail!("{} answer(s) did not come within {DRAIN:?}", awaited.len());
            }
        }
    }
}

/// A frame as a person reads it.
fn describe(frame: &Value, text: &str) -> String {
    let compact = |value: &Value| {
        if value.is_null() {
            String::new()
        } else {
            value.to_string()
        }
    };
    if let Some(result) = frame.get("result").and_then(Value::as_str) {
        let tid = compact(&frame["tid"]);
        return match result {
            "ok" => format!("ok #{tid} {}", compact(&frame["data"])),
            _ => format!(
                "error #{tid} {}: {}",
                frame["data"]["code"].as_str().unwrap_or("?"),
                frame["data"]["error"].as_str().unwrap_or("")
            ),
        };
    }
    if frame["cmd"] == "event" && frame["class"] == "core" {
        let data = &frame["data"];
        let key: Vec<&str> = ["class", "subclass", "type", "obj_id"]
            .iter()
            .map(|field| data[*field].as_str().unwrap_or("*"))
            .collect();
        let position = frame
            .get("pos")
            .map(|pos| format!(" @{}:{}", pos["epoch"], pos["offset"]))
            .unwrap_or_default();
        return format!(
            "event {}{position} {}",
            key.join("/"),
            compact(&data["body"])
        );
    }
    if frame.get("cmd").is_some() && frame.get("tid").is_some() {
        return format!(
            "request #{tid} {} {} {} {}   (answer: reply {tid} {{…}} | fail {tid} CODE)",
            frame["class"].as_str().unwrap_or("?"),
            frame["subclass"].as_str().unwrap_or("core"),
            frame["cmd"].as_str().unwrap_or("?"),
            compact(&frame["data"]),
            tid = compact(&frame["tid"]),
        );
    }
    text.to_owned()
}

/// Starts reading input on a thread of its own; returns how to print.
fn start_input(interactive: bool, lines: mpsc::Sender<Input>) -> anyhow::Result<Printer> {
    if !interactive {
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if lines.blocking_send(Input::Line(line)).is_err() {
                    return;
                }
            }
            let _ = lines.blocking_send(Input::End);
        });
        return Ok(Box::new(|text| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        }));
    }
    let mut editor = rustyline::Editor::<Completion, rustyline::history::DefaultHistory>::new()?;
    editor.set_helper(Some(Completion));
    let history = std::env::var_os("HOME")
        .map(|home| std::path::PathBuf::from(home).join(".switchboard_history"));
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    let mut printer = editor.create_external_printer()?;
    std::thread::spawn(move || {
        loop {
            match editor.readline("> ") {
                Ok(line) => {
                    let _ = editor.add_history_entry(line.as_str());
                    if lines.blocking_send(Input::Line(line)).is_err() {
                        break;
                    }
                }
                Err(_) => {
                    let _ = lines.blocking_send(Input::End);
                    break;
                }
            }
        }
        if let Some(path) = &history {
            let _ = editor.save_history(path);
        }
    });
    Ok(Box::new(move |text| {
        use rustyline::ExternalPrinter as _;
        let _ = printer.print(format!("{text}\n"));
    }))
}

/// Completes subclasses and commands.
struct Completion;

impl rustyline::completion::Completer for Completion {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        Ok(line::completions(line.get(..pos).unwrap_or(line)))
    }
}

impl rustyline::hint::Hinter for Completion {
    type Hint = String;
}
impl rustyline::highlight::Highlighter for Completion {}
impl rustyline::validate::Validator for Completion {}
impl rustyline::Helper for Completion {}
