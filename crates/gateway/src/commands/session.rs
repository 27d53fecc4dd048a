//! `session stop`, `session send_event`, `session cmd`, `session log`, `session ping`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use switchboard_proto::v1::{
    CmdRequest as GrpcCmdRequest, LookupRequest, SessionInfo, StopRequest,
};

use switchboard_protocol::fields::Fields;
use switchboard_protocol::frame::Request;
use switchboard_protocol::limits;
use switchboard_protocol::{ApiError, ErrorCode};
use tonic::Code;

use crate::clients::status_to_api_error;
use crate::conn_state::ConnState;
use crate::gateway::Gateway;
use crate::gelf::LogRecord;
use crate::outbound::Outbound;
use crate::reply::{CommandResult, Failure, encode, session_not_found};
use crate::server_request::CmdRequest;
use crate::session::{CmdAnswer, Identity};
use switchboard_proto::v1::PublishRequest;

/// Where a target session lives.
enum Location {
    /// On this gateway.
    Local(String),
    /// On another gateway, reachable at its SessionControl address.
    Remote(SessionInfo),
}

impl Location {
    fn user(&self) -> &str {
        match self {
            Self::Local(user) => user,
            Self::Remote(info) => &info.user,
        }
    }
}

/// Finds a session: locally first, then through the registry.
async fn locate(gateway: &Gateway, session_id: &str) -> Result<Location, ApiError> {
    if let Some(session) = gateway.hub.session(session_id)
        && let Some(identity) = session.identity()
    {
        return Ok(Location::Local(identity.user.clone()));
    }
    let reply = gateway
        .services
        .registry
        .clone()
        .lookup(gateway.services.request(LookupRequest {
            session_id: session_id.to_owned(),
        }))
        .await
        .map_err(|status| match status.code() {
            Code::NotFound => session_not_found(),
            _ => status_to_api_error(&status, "session registry"),
        })?
        .into_inner();
    let info = reply.session.ok_or_else(session_not_found)?;
    if info.gateway_id == gateway.config.gateway_id {
        // Registered here but already gone locally: the session is closing.
        return Err(session_not_found());
    }
    Ok(Location::Remote(info))
}

fn check_own_user(
    identity: &Identity,
    own_user_only: bool,
    location: &Location,
) -> Result<(), ApiError> {
    if own_user_only && location.user() != identity.user {
        return Err(ApiError::unauthorized());
    }
    Ok(())
}

/// `session stop`.
pub(crate) async fn stop(
    gateway: &Gateway,
    state: &mut ConnState,
    identity: &Identity,
    own_user_only: bool,
    data: &Map<String, Value>,
) -> CommandResult {
    let session_id = Fields(data).required_str("session_id")?;
    if session_id == identity.session_id {
        // Released before the answer: once the client reads it, the id is free again.
        gateway
            .release(
                &state.session,
                switchboard_protocol::presence::reason::STOPPED,
            )
            .await;
        state.stop_after_reply = true;
        return Ok(json!({"user": identity.user}));
    }
    let location = locate(gateway, session_id).await?;
    check_own_user(identity, own_user_only, &location)?;
    let user = match location {
        Location::Local(_) => gateway.stop(session_id).await?,
        Location::Remote(info) => {
            let mut control = gateway.services.control(&info.control_addr)?;
            control
                .stop(gateway.services.request(StopRequest {
                    session_id: session_id.to_owned(),
                    taken_over: false,
                }))
                .await
                .map_err(|status| match status.code() {
                    Code::NotFound => session_not_found(),
                    _ => status_to_api_error(&status, "gateway"),
                })?
                .into_inner()
                .user
        }
    };
    Ok(json!({"user": user}))
}

/// `session send_event`: fires `core/session_event/<type>/<session_id>`.
pub(crate) fn send_event(
    gateway: &Gateway,
    state: &ConnState,
    data: &Map<String, Value>,
) -> Result<PublishRequest, Failure> {
    super::core_event_request(gateway, state, data, "session_event", "session_id")
}

/// The validated fields of `session cmd`.
struct CmdFields {
    session_id: String,
    class: String,
    subclass: String,
    cmd: String,
    data: Value,
}

fn cmd_fields(data: &Map<String, Value>) -> Result<CmdFields, ApiError> {
    let fields = Fields(data);
    let session_id = fields.required_str("session_id")?.to_owned();
    let class = fields.required_str("class")?.to_owned();
    let subclass = fields.str_or("subclass", "core")?.to_owned();
    let cmd = fields.required_str("cmd")?.to_owned();
    let data = Value::Object(fields.optional_object("data")?.cloned().unwrap_or_default());
    Ok(CmdFields {
        session_id,
        class,
        subclass,
        cmd,
        data,
    })
}

fn answer_to_result(answer: CmdAnswer) -> CommandResult {
    if answer.ok {
        Ok(if answer.data.is_null() {
            json!({})
        } else {
            answer.data
        })
    } else {
        Err(Failure::Forwarded(answer.data))
    }
}

/// `session cmd`: validated here, then run in its own task so the connection keeps serving
/// (and can answer a `session cmd` addressed to itself). Returns `None`: the answer is queued
/// by that task.
pub(crate) fn cmd(
    gateway: &Arc<Gateway>,
    state: &mut ConnState,
    identity: &Identity,
    own_user_only: bool,
    request: Request,
) -> Option<String> {
    let tid = request.tid;
    let fields = match cmd_fields(&request.data) {
        Ok(fields) => fields,
        Err(error) => return Some(encode(&tid, Err(error.into()))),
    };
    let cmd_tasks = state
        .cmd_tasks
        .get_or_insert_with(tokio::task::JoinSet::new);
    while cmd_tasks.try_join_next().is_some() {}
    if cmd_tasks.len() >= gateway.config.max_pending_cmds {
        let error = ApiError::new(
            ErrorCode::LimitExceeded,
            format!(
                "at most {} session cmd may wait at once",
                gateway.config.max_pending_cmds
            ),
        );
        return Some(encode(&tid, Err(error.into())));
    }
    let gateway = Arc::clone(gateway);
    let session = Arc::clone(&state.session);
    let identity = identity.clone();
    cmd_tasks.spawn(async move {
        let result = run_cmd(&gateway, &identity, own_user_only, fields).await;
        session.send(Outbound::Text(encode(&tid, result))).await;
    });
    None
}

async fn run_cmd(
    gateway: &Gateway,
    identity: &Identity,
    own_user_only: bool,
    fields: CmdFields,
) -> CommandResult {
    let location = locate(gateway, &fields.session_id).await?;
    check_own_user(identity, own_user_only, &location)?;
    match location {
        Location::Local(_) => {
            let request = CmdRequest {
                class: &fields.class,
                subclass: &fields.subclass,
                cmd: &fields.cmd,
                data: &fields.data,
            };
            let answer = gateway.session_cmd(&fields.session_id, request).await?;
            answer_to_result(answer)
        }
        Location::Remote(info) => {
            let mut control = gateway.services.control(&info.control_addr)?;
            let mut request = tonic::Request::new(GrpcCmdRequest {
                session_id: fields.session_id,
                class: fields.class,
                subclass: fields.subclass,
                cmd: fields.cmd,
                data_json: fields.data.to_string(),
            });
            request.set_timeout(gateway.config.cmd_max_timeout + gateway.config.rpc_timeout);
            let reply = control
                .cmd(request)
                .await
                .map_err(|status| match status.code() {
                    Code::NotFound => session_not_found(),
                    Code::Aborted => ApiError::new(
                        ErrorCode::SessionStopped,
                        "the session ended before it answered",
                    ),
                    Code::DeadlineExceeded => {
                        ApiError::new(ErrorCode::Timeout, "the session did not answer in time")
                    }
                    _ => status_to_api_error(&status, "gateway"),
                })?
                .into_inner();
            let data = serde_json::from_str(&reply.data_json).unwrap_or(Value::Null);
            answer_to_result(CmdAnswer { ok: reply.ok, data })
        }
    }
}

/// `session log`: queues a GELF message; never fails for a missing log server.
pub(crate) fn log(
    gateway: &Gateway,
    state: &ConnState,
    identity: &Identity,
    data: &Map<String, Value>,
) -> CommandResult {
    limits::check_json("data", data, gateway.config.limits.log_record)?;
    let fields = Fields(data);
    let source = fields.required_str("source")?;
    let message = fields.required_str("message")?;
    let level = fields.int_or("level", 0..=7, 1)?;
    let full_message = fields.optional_str("full_message")?;
    let meta = fields.optional_object("meta")?;
    gateway.gelf.send(LogRecord {
        host: source.to_owned(),
        short_message: message.to_owned(),
        full_message: full_message.map(str::to_owned),
        level: level as u8,
        timestamp: now_seconds(),
        meta: meta.cloned().unwrap_or_default(),
        user: identity.user.clone(),
        session_id: identity.session_id.clone(),
        service: state.session.service.clone(),
    });
    Ok(json!({}))
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// `session ping`.
pub(crate) fn ping() -> Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64;
    json!({"now": now})
}
