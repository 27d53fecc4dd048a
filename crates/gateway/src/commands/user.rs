//! `user login`, `user list`, `user get`, `user send_event`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};
use switchboard_proto::v1::{
    GetUserRequest, ListUsersRequest, LoginReply, LoginRequest, RegisterRequest, SessionInfo,
    StopRequest,
};
use switchboard_protocol::event::{EventKey, WILDCARD};
use switchboard_protocol::fields::Fields;
use switchboard_protocol::limits;
use switchboard_protocol::{ApiError, ErrorCode, MAX_SESSION_ID_LEN, MAX_USER_LEN};
use tonic::Code;

use crate::clients::status_to_api_error;
use crate::conn_state::ConnState;
use crate::gateway::Gateway;
use crate::reply::{CommandResult, Failure};
use crate::routes::{Subscription, empty_body};
use crate::session::{Identity, SessionHandle};
use crate::token::TokenExpiry;
use switchboard_proto::v1::PublishRequest;

/// Class of the automatic subscriptions' events.
pub(crate) const CORE_CLASS: &str = "core";

/// The credentials of a `user login`.
struct Credentials<'a> {
    user: &'a str,
    password: &'a str,
    session_id: &'a str,
    /// The session's resume key, to take it over from another connection (§11).
    resume_key: Option<&'a str>,
}

/// Longest `resume_key` accepted (the server issues 64 characters).
const MAX_RESUME_KEY_LEN: usize = 256;

fn credentials(fields: Fields<'_>) -> Result<Credentials<'_>, ApiError> {
    let user = fields.required_str("user")?;
    if user.len() > MAX_USER_LEN {
        return Err(ApiError::syntax("user", "at most 256 bytes"));
    }
    let Some(password) = fields
        .optional_str("password")?
        .or(fields.optional_str("pass")?)
    else {
        return Err(ApiError::missing_field("password"));
    };
    let session_id = fields.optional_str("session_id")?.unwrap_or_default();
    if session_id.len() > MAX_SESSION_ID_LEN {
        return Err(ApiError::syntax("session_id", "at most 128 bytes"));
    }
    let resume_key = fields.optional_str("resume_key")?;
    if resume_key.is_some_and(|key| key.len() > MAX_RESUME_KEY_LEN) {
        return Err(ApiError::syntax("resume_key", "at most 256 bytes"));
    }
    Ok(Credentials {
        user,
        password,
        session_id,
        resume_key: resume_key.filter(|_| !session_id.is_empty()),
    })
}

/// Asks the auth service about `credentials`.
async fn authenticate(
    gateway: &Gateway,
    session: &SessionHandle,
    credentials: &Credentials<'_>,
) -> Result<LoginReply, ApiError> {
    gateway
        .services
        .logins
        .call(LoginRequest {
            service: session.service.clone(),
            user: credentials.user.to_owned(),
            password: credentials.password.to_owned(),
            session_id: credentials.session_id.to_owned(),
            remote: session.remote.clone(),
        })
        .await
        .map_err(|status| match status.code() {
            Code::Unauthenticated => ApiError::new(
                ErrorCode::InvalidCredentials,
                "unknown user or wrong password",
            ),
            Code::ResourceExhausted => ApiError::new(
                ErrorCode::TooManyAttempts,
                "too many login attempts, retry later",
            ),
            _ => status_to_api_error(&status, "auth"),
        })
}

/// `user login` on a connection logged in with a token: a new token for the same user
/// moves the session's expiry. Anything else is `already_authenticated`.
pub(crate) async fn refresh(
    gateway: &Arc<Gateway>,
    state: &mut ConnState,
    identity: &Identity,
    data: &Map<String, Value>,
) -> CommandResult {
    let already = || {
        ApiError::new(
            ErrorCode::AlreadyAuthenticated,
            "this connection is logged in",
        )
    };
    if state.token.is_none() {
        return Err(already().into());
    }
    let mut credentials = credentials(Fields(data))?;
    if credentials.user != identity.user {
        return Err(already().into());
    }
    credentials.session_id = &identity.session_id;
    let reply = authenticate(gateway, &state.session, &credentials).await?;
    if reply.user != identity.user || reply.expires_at == 0 {
        return Err(already().into());
    }
    if reply.roles != identity.roles {
        return Err(ApiError::new(
            ErrorCode::AlreadyAuthenticated,
            "the new token's roles differ from the session's: log in on a new connection",
        )
        .into());
    }
    state.token = Some(TokenExpiry::new(reply.expires_at));
    Ok(json!({"session_id": identity.session_id, "expires_at": reply.expires_at}))
}

/// `user login`: authenticate, register, subscribe the automatic subscriptions.
pub(crate) async fn login(
    gateway: &Arc<Gateway>,
    state: &mut ConnState,
    data: &Map<String, Value>,
) -> CommandResult {
    let fields = Fields(data);
    let credentials = credentials(fields)?;
    let meta_json = fields
        .optional_object("meta")?
        .map(|meta| Value::Object(meta.clone()).to_string())
        .unwrap_or_default();
    limits::check("meta", meta_json.len(), gateway.config.limits.login_meta)?;
    let session = Arc::clone(&state.session);
    let reply = authenticate(gateway, &session, &credentials).await?;
    let duplicated = || ApiError::new(ErrorCode::DuplicatedSessionId, "session id is in use");
    // A session id held here already can only be taken over (with its resume key).
    let inserted = gateway
        .hub
        .insert_session(&reply.session_id, Arc::clone(&session));
    if !inserted && credentials.resume_key.is_none() {
        return Err(duplicated().into());
    }
    let resume_key = new_resume_key();
    let resume_hash = resume_hash(&resume_key);
    let info = gateway.session_info(
        &reply.session_id,
        &reply.user,
        &session.service,
        &session.remote,
        meta_json.clone(),
        resume_hash.clone(),
    );
    let registered = gateway
        .services
        .registrations
        .call(RegisterRequest {
            session: Some(info),
            takeover_hash: credentials
                .resume_key
                .map(self::resume_hash)
                .unwrap_or_default(),
        })
        .await;
    let previous = match registered {
        Ok(reply) => reply.previous,
        Err(status) => {
            if inserted {
                gateway
                    .hub
                    .remove_session_of(&reply.session_id, session.conn_id);
                if !matches!(status.code(), Code::AlreadyExists | Code::ResourceExhausted) {
                    // The registry may have stored it before the call failed: take it back
                    // before answering, so a retried login cannot be undone by a late
                    // unregister.
                    gateway.unregister_now(&reply.session_id).await;
                }
            }
            return Err(match status.code() {
                Code::AlreadyExists => duplicated(),
                Code::ResourceExhausted => ApiError::new(
                    ErrorCode::LimitExceeded,
                    "this user has the most sessions allowed",
                ),
                _ => status_to_api_error(&status, "session registry"),
            }
            .into());
        }
    };
    if let Some(previous) = previous {
        end_previous_connection(gateway, &session, &reply.session_id, previous);
    } else if !inserted {
        // Registered, not taken over, while another connection here holds the id (it is
        // still logging in): take the registration back and refuse, as without a key.
        gateway.unregister_now(&reply.session_id).await;
        return Err(duplicated().into());
    }
    // The automatic subscriptions, in one broker round trip. Oldest first, so
    // `get_subscriptions` (newest first) lists the session's first.
    let automatic: Vec<Subscription> = [
        ("user_event", &reply.user),
        ("session_event", &reply.session_id),
    ]
    .into_iter()
    .map(|(subclass, obj_id)| {
        let key = EventKey {
            service: session.service.clone(),
            class: CORE_CLASS.to_owned(),
            subclass: subclass.to_owned(),
            type_: WILDCARD.to_owned(),
            obj_id: obj_id.clone(),
        };
        Subscription {
            channel: Arc::from(key.channel()),
            body: empty_body(),
            positioned: None,
        }
    })
    .collect();
    if let Err(error) = gateway.hub.routes.add(&automatic, &session).await {
        tracing::warn!(%error, "automatic subscriptions failed");
        gateway.hub.remove_session(&reply.session_id);
        gateway.unregister_now(&reply.session_id).await;
        return Err(ApiError::unavailable("event broker").into());
    }
    for subscription in automatic {
        state.subscriptions.insert(0, subscription);
    }
    session.set_identity(Identity {
        session_id: reply.session_id.clone(),
        user: reply.user.clone(),
        roles: reply.roles,
        meta_json,
        resume_hash,
    });
    tracing::debug!(conn.id = session.conn_id, session.id = %reply.session_id, user = %reply.user, "logged in");
    let mut answer = json!({"session_id": reply.session_id, "resume_key": resume_key});
    if reply.expires_at != 0 {
        state.token = Some(TokenExpiry::new(reply.expires_at));
        answer["expires_at"] = json!(reply.expires_at);
    }
    Ok(answer)
}

/// A new resume key: 244 random bits as 64 URL-safe characters.
fn new_resume_key() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// What the registry keeps of a resume key: its hex SHA-256.
fn resume_hash(key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        use std::fmt::Write;
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// Ends the connection a takeover moved `session_id` away from: here, it is replaced in the
/// hub and closed with 4002; on another gateway (or one that crashed), that gateway is asked
/// to close it, without waiting.
fn end_previous_connection(
    gateway: &Arc<Gateway>,
    session: &Arc<SessionHandle>,
    session_id: &str,
    previous: SessionInfo,
) {
    if previous.gateway_id == gateway.config.gateway_id {
        if let Some(old) = gateway.hub.replace_session(session_id, Arc::clone(session))
            && old.conn_id != session.conn_id
        {
            Gateway::close_taken_over(&old);
        }
        return;
    }
    let Ok(mut control) = gateway.services.control(&previous.control_addr) else {
        return;
    };
    let request = gateway.services.request(StopRequest {
        session_id: session_id.to_owned(),
        taken_over: true,
    });
    tokio::spawn(async move {
        if let Err(status) = control.stop(request).await {
            // A crashed gateway: nothing to close.
            tracing::debug!(code = ?status.code(), "the taken-over session's gateway did not answer");
        }
    });
}

/// `user list`: every page of the registry's listing, merged into one answer.
pub(crate) async fn list(gateway: &Gateway, state: &ConnState) -> CommandResult {
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut cursor = String::new();
    loop {
        let reply = gateway
            .services
            .registry
            .clone()
            .list_users(gateway.services.request(ListUsersRequest {
                service: state.session.service.clone(),
                cursor,
                limit: 0,
            }))
            .await
            .map_err(|status| status_to_api_error(&status, "session registry"))?
            .into_inner();
        for entry in reply.users {
            let ids = users.entry(entry.user).or_default();
            ids.extend(entry.session_ids);
        }
        if reply.next_cursor.is_empty() {
            break;
        }
        cursor = reply.next_cursor;
    }
    let users: Map<String, Value> = users
        .into_iter()
        .map(|(user, mut ids)| {
            ids.sort();
            ids.dedup();
            (user, json!(ids))
        })
        .collect();
    Ok(Value::Object(users))
}

/// `user get`.
pub(crate) async fn get(
    gateway: &Gateway,
    state: &ConnState,
    data: &Map<String, Value>,
) -> CommandResult {
    let user = Fields(data).required_str("user")?;
    let reply = gateway
        .services
        .registry
        .clone()
        .get_user(gateway.services.request(GetUserRequest {
            service: state.session.service.clone(),
            user: user.to_owned(),
        }))
        .await
        .map_err(|status| match status.code() {
            Code::NotFound => ApiError::new(ErrorCode::UserNotFound, "user has no session"),
            _ => status_to_api_error(&status, "session registry"),
        })?
        .into_inner();
    let sessions: Map<String, Value> = reply
        .sessions
        .into_iter()
        .map(|session| {
            let meta = serde_json::from_str::<Value>(&session.meta_json)
                .unwrap_or_else(|_| Value::Object(Map::new()));
            (
                session.session_id,
                json!({"type": session.r#type, "remote": session.remote, "meta": meta}),
            )
        })
        .collect();
    Ok(Value::Object(sessions))
}

/// `user send_event`: fires `core/user_event/<type>/<user>`.
pub(crate) fn send_event(
    gateway: &Gateway,
    state: &ConnState,
    data: &Map<String, Value>,
) -> Result<PublishRequest, Failure> {
    super::core_event_request(gateway, state, data, "user_event", "user")
}
