//! `switchboard ctl`: the operator's command line. It speaks gRPC with the internal secret to
//! the session registry (users, sessions, gateways), the event bus (publish) and each gateway's
//! SessionControl (stop, stats); it never opens a WebSocket.

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use switchboard_proto::MAX_MESSAGE_BYTES;
use switchboard_proto::internal::{InternalSecret, SecuredChannel};
use switchboard_proto::v1::event_bus_client::EventBusClient;
use switchboard_proto::v1::session_control_client::SessionControlClient;
use switchboard_proto::v1::session_registry_client::SessionRegistryClient;
use switchboard_proto::v1::{
    Event, GetUserRequest, ListGatewaysRequest, ListUsersRequest, LookupRequest, PublishRequest,
    SessionInfo, StatsRequest, StopRequest,
};
use tonic::transport::Endpoint;

/// How long one call may take before `ctl` gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the services are and the credential they require.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The session registry.
    #[arg(long, env = "SWITCHBOARD_REGISTRY_URL", default_value = switchboard_gateway::config::DEFAULT_REGISTRY_URL)]
    pub registry_url: String,
    /// The event bus.
    #[arg(long, env = "SWITCHBOARD_BUS_URL", default_value = switchboard_gateway::config::DEFAULT_BUS_URL)]
    pub bus_url: String,
    /// The deployment's internal secret.
    #[arg(long, env = "SWITCHBOARD_INTERNAL_SECRET", hide_env_values = true)]
    pub internal_secret: String,
    /// The service (tenant) of `users`, `sessions` and `publish` ["" is the default service].
    #[arg(long, default_value = "")]
    pub service: String,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// What to do.
#[derive(Debug, clap::Subcommand)]
pub enum CtlCommand {
    /// Every logged-in user with their session count.
    Users,
    /// The sessions of USER: id, gateway, remote address, meta.
    Sessions {
        /// The user.
        user: String,
    },
    /// Publishes an event as the platform (no policy applies): `publish CLASS [BODY]` or
    /// `publish CLASS SUBCLASS TYPE OBJ_ID [BODY]`; BODY is a JSON object.
    Publish {
        /// The event's class.
        class: String,
        /// SUBCLASS TYPE OBJ_ID, then BODY; or BODY alone.
        #[arg(num_args = 0..=4)]
        rest: Vec<String>,
    },
    /// Disconnects a session (close code 1000), wherever it is.
    Stop {
        /// The session id.
        session_id: String,
    },
    /// Per gateway: connections, sessions, subscriptions, uptime, version.
    Stats,
}

/// Runs one `ctl` command and prints its outcome on standard output.
///
/// # Errors
/// When a service cannot be reached, refuses the call, or the arguments are invalid.
pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    let secret = InternalSecret::new(&args.internal_secret).context("invalid internal secret")?;
    let out = Printer { json: args.json };
    match &args.command {
        CtlCommand::Users => users(&args, &secret, &out).await,
        CtlCommand::Sessions { user } => sessions(&args, &secret, &out, user).await,
        CtlCommand::Publish { class, rest } => {
            let event = event_of(&args.service, class, rest)?;
            publish(&args, &secret, &out, event).await
        }
        CtlCommand::Stop { session_id } => stop(&args, &secret, &out, session_id).await,
        CtlCommand::Stats => stats(&args, &secret, &out).await,
    }
}

/// Connects to `address` now, so that an unreachable service is named at once.
async fn channel(
    what: &str,
    address: &str,
    secret: &InternalSecret,
) -> anyhow::Result<SecuredChannel> {
    let url = if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    let channel = Endpoint::from_shared(url)
        .with_context(|| format!("invalid {what} address {address:?}"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(CALL_TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("cannot reach the {what} at {address}"))?;
    Ok(secret.channel(channel))
}

async fn registry(
    args: &CtlArgs,
    secret: &InternalSecret,
) -> anyhow::Result<SessionRegistryClient<SecuredChannel>> {
    Ok(
        SessionRegistryClient::new(channel("registry", &args.registry_url, secret).await?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
    )
}

async fn control(
    address: &str,
    secret: &InternalSecret,
) -> anyhow::Result<SessionControlClient<SecuredChannel>> {
    Ok(SessionControlClient::new(
        channel("gateway", address, secret).await?,
    ))
}

/// Names a refused call: its service, what was asked, and the status's own message.
fn refused(what: &str) -> impl FnOnce(tonic::Status) -> anyhow::Error + '_ {
    move |status| anyhow::anyhow!("{what}: {:?}: {}", status.code(), status.message())
}

async fn users(args: &CtlArgs, secret: &InternalSecret, out: &Printer) -> anyhow::Result<()> {
    let mut registry = registry(args, secret).await?;
    let mut users: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        std::collections::BTreeMap::new();
    let mut cursor = String::new();
    loop {
        let page = registry
            .list_users(ListUsersRequest {
                service: args.service.clone(),
                cursor: cursor.clone(),
                limit: 0,
            })
            .await
            .map_err(refused("registry ListUsers"))?
            .into_inner();
        for user in page.users {
            users.entry(user.user).or_default().extend(user.session_ids);
        }
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    let rows = users
        .into_iter()
        .map(|(user, sessions)| json!({"user": user, "sessions": sessions.len()}));
    out.table(&["user", "sessions"], rows);
    Ok(())
}

fn session_row(session: &SessionInfo) -> Value {
    let meta: Value = serde_json::from_str(&session.meta_json).unwrap_or(Value::Null);
    json!({
        "session_id": session.session_id,
        "user": session.user,
        "gateway": session.gateway_id,
        "remote": session.remote,
        "meta": meta,
    })
}

async fn sessions(
    args: &CtlArgs,
    secret: &InternalSecret,
    out: &Printer,
    user: &str,
) -> anyhow::Result<()> {
    let reply = registry(args, secret)
        .await?
        .get_user(GetUserRequest {
            service: args.service.clone(),
            user: user.to_owned(),
        })
        .await;
    let sessions = match reply {
        Ok(reply) => reply.into_inner().sessions,
        Err(status) if status.code() == tonic::Code::NotFound => Vec::new(),
        Err(status) => return Err(refused("registry GetUser")(status)),
    };
    out.table(
        &["session_id", "gateway", "remote", "meta"],
        sessions.iter().map(session_row),
    );
    Ok(())
}

/// The event of `publish CLASS [SUBCLASS TYPE OBJ_ID] [BODY]`.
fn event_of(service: &str, class: &str, rest: &[String]) -> anyhow::Result<Event> {
    let (key, body) = match rest {
        [] => (None, None),
        [body] => (None, Some(body)),
        [subclass, type_, obj_id] => (Some((subclass, type_, obj_id)), None),
        [subclass, type_, obj_id, body] => (Some((subclass, type_, obj_id)), Some(body)),
        _ => anyhow::bail!(
            "publish takes CLASS [BODY] or CLASS SUBCLASS TYPE OBJ_ID [BODY], not {} words after CLASS",
            rest.len()
        ),
    };
    let body_json = match body {
        Some(body) => {
            let value: Value =
                serde_json::from_str(body).context("BODY is not JSON (e.g. '{\"k\":1}')")?;
            anyhow::ensure!(value.is_object(), "BODY must be a JSON object");
            value.to_string()
        }
        None => String::new(),
    };
    let (subclass, type_, obj_id) = key.map_or(("*", "*", "*"), |(s, t, o)| {
        (s.as_str(), t.as_str(), o.as_str())
    });
    Ok(Event {
        service: service.to_owned(),
        class: class.to_owned(),
        subclass: subclass.to_owned(),
        r#type: type_.to_owned(),
        obj_id: obj_id.to_owned(),
        body_json,
    })
}

async fn publish(
    args: &CtlArgs,
    secret: &InternalSecret,
    out: &Printer,
    event: Event,
) -> anyhow::Result<()> {
    let mut bus = EventBusClient::new(channel("event bus", &args.bus_url, secret).await?);
    let row = json!({
        "published": format!("{}/{}/{}/{}", event.class, event.subclass, event.r#type, event.obj_id),
    });
    bus.publish(PublishRequest {
        event: Some(event),
        roles: Vec::new(),
        publisher_service: args.service.clone(),
        trusted: true,
    })
    .await
    .map_err(refused("bus Publish"))?;
    out.table(&["published"], [row]);
    Ok(())
}

async fn stop(
    args: &CtlArgs,
    secret: &InternalSecret,
    out: &Printer,
    session_id: &str,
) -> anyhow::Result<()> {
    let lookup = registry(args, secret)
        .await?
        .lookup(LookupRequest {
            session_id: session_id.to_owned(),
        })
        .await;
    let session = match lookup {
        Ok(reply) => reply.into_inner().session.unwrap_or_default(),
        Err(status) if status.code() == tonic::Code::NotFound => {
            anyhow::bail!("no session {session_id}")
        }
        Err(status) => return Err(refused("registry Lookup")(status)),
    };
    let reply = control(&session.control_addr, secret)
        .await?
        .stop(StopRequest {
            session_id: session_id.to_owned(),
            taken_over: false,
        })
        .await
        .map_err(refused("gateway Stop"))?
        .into_inner();
    out.table(
        &["stopped", "user", "gateway"],
        [json!({"stopped": session_id, "user": reply.user, "gateway": session.gateway_id})],
    );
    Ok(())
}

async fn stats(args: &CtlArgs, secret: &InternalSecret, out: &Printer) -> anyhow::Result<()> {
    let gateways = registry(args, secret)
        .await?
        .list_gateways(ListGatewaysRequest {})
        .await
        .map_err(refused("registry ListGateways"))?
        .into_inner()
        .gateways;
    let mut rows = Vec::with_capacity(gateways.len());
    let mut failed = 0;
    for gateway in gateways {
        let asked = async {
            anyhow::ensure!(
                !gateway.control_addr.is_empty(),
                "its heartbeats carry no address yet"
            );
            control(&gateway.control_addr, secret)
                .await?
                .stats(StatsRequest {})
                .await
                .map_err(refused("gateway Stats"))
        };
        match asked.await {
            Ok(reply) => {
                let stats = reply.into_inner();
                rows.push(json!({
                    "gateway": gateway.gateway_id,
                    "address": gateway.control_addr,
                    "connections": stats.connections,
                    "sessions": stats.sessions,
                    "subscriptions": stats.subscriptions,
                    "uptime": humantime::format_duration(Duration::from_secs(stats.uptime_seconds)).to_string(),
                    "version": stats.version,
                }));
            }
            Err(error) => {
                failed += 1;
                rows.push(json!({
                    "gateway": gateway.gateway_id,
                    "address": gateway.control_addr,
                    "error": format!("{error:#}"),
                }));
            }
        }
    }
    out.table(
        &[
            "gateway",
            "address",
            "connections",
            "sessions",
            "subscriptions",
            "uptime",
            "version",
            "error",
        ],
        rows,
    );
    anyhow::ensure!(failed == 0, "{failed} gateway(s) did not answer");
    Ok(())
}

/// Prints rows as an aligned table, or as JSON lines with `--json`.
struct Printer {
    json: bool,
}

impl Printer {
    fn table(&self, columns: &[&str], rows: impl IntoIterator<Item = Value>) {
        let rows: Vec<Value> = rows.into_iter().collect();
        if self.json {
            for row in &rows {
                println!("{row}");
            }
            return;
        }
        // Only the columns some row has (`error` appears only when a gateway failed).
        let columns: Vec<&str> = columns
            .iter()
            .copied()
            .filter(|column| rows.iter().any(|row| row.get(column).is_some()))
            .collect();
        let cell = |row: &Value, column: &str| match row.get(column) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(text)) => text.clone(),
            Some(other) => other.to_string(),
        };
        let widths: Vec<usize> = columns
            .iter()
            .map(|column| {
                rows.iter()
                    .map(|row| cell(row, column).chars().count())
                    .chain([column.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: Vec<String>| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(text, width)| format!("{text:<width$}"))
                .collect();
            println!("{}", padded.join("  ").trim_end());
        };
        line(columns.iter().map(|c| c.to_uppercase()).collect());
        for row in &rows {
            line(columns.iter().map(|column| cell(row, column)).collect());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(words: &[&str]) -> Vec<String> {
        words.iter().map(|word| (*word).to_owned()).collect()
    }

    #[test]
    fn publish_arguments_read_both_ways() {
        let event = event_of("", "media", &[]).expect("class alone");
        assert_eq!((event.subclass.as_str(), event.r#type.as_str()), ("*", "*"));
        let event = event_of("", "media", &words(&[r#"{"a":1}"#])).expect("class and body");
        assert_eq!(event.body_json, r#"{"a":1}"#);
        let event = event_of("svc", "media", &words(&["call", "started", "c1", "{}"]))
            .expect("the whole key and a body");
        assert_eq!(
            (
                event.service.as_str(),
                event.subclass.as_str(),
                event.r#type.as_str(),
                event.obj_id.as_str()
            ),
            ("svc", "call", "started", "c1")
        );
        let wrong = event_of("", "media", &words(&["call", "started"])).expect_err("two words");
        assert!(wrong.to_string().contains("CLASS SUBCLASS TYPE OBJ_ID"));
        let wrong = event_of("", "media", &words(&["[1]"])).expect_err("not an object");
        assert!(wrong.to_string().contains("JSON object"));
        let wrong = event_of("", "media", &words(&["{nope"])).expect_err("not JSON");
        assert!(wrong.to_string().contains("not JSON"));
    }
}
