//! Routes a decoded request to its command, applying login state and the policy.

use std::sync::Arc;

use switchboard_protocol::frame::Request;
use switchboard_protocol::policy::Access;
use switchboard_protocol::{ApiError, ErrorCode};

use crate::commands;
use crate::conn_state::ConnState;
use crate::gateway::Gateway;
use crate::metrics::METRICS;
use crate::reply::{Failure, encode};

fn unknown_command(request: &Request) -> ApiError {
    ApiError::new(
        ErrorCode::UnknownCommand,
        format!(
            "unknown command {}/{}/{}",
            request.class, request.subclass, request.cmd
        ),
    )
}

/// Handles one request; returns the response frame, or `None` when the answer comes later.
pub(crate) async fn dispatch(
    gateway: &Arc<Gateway>,
    state: &mut ConnState,
    request: Request,
) -> Option<String> {
    let tid = request.tid.clone();
    if request.class != "core" {
        return Some(encode(&tid, Err(unknown_command(&request).into())));
    }
    let known = commands::is_known(&request.subclass, &request.cmd);
    if !known {
        return Some(encode(&tid, Err(unknown_command(&request).into())));
    }
    if state.expired {
        let error = ApiError::new(ErrorCode::NotAuthenticated, "the session's token expired");
        return Some(encode(&tid, Err(error.into())));
    }
    let Some(identity) = state.session.identity().cloned() else {
        let result = if (request.subclass.as_str(), request.cmd.as_str()) == ("user", "login") {
            let started = std::time::Instant::now();
            let result = commands::user::login(gateway, state, &request.data).await;
            let outcome = match &result {
                Ok(_) => Ok(()),
                Err(Failure::Api(error)) => Err(error.code),
                Err(Failure::Forwarded(_)) => Err(ErrorCode::InternalError),
            };
            METRICS.count_login(started, outcome);
            result
        } else {
            Err(ApiError::new(ErrorCode::NotAuthenticated, "log in first").into())
        };
        return Some(encode(&tid, result));
    };
    if (request.subclass.as_str(), request.cmd.as_str()) == ("user", "login") {
        let result = commands::user::refresh(gateway, state, &identity, &request.data).await;
        return Some(encode(&tid, result));
    }
    let access =
        gateway
            .config
            .policy
            .command_access(&identity.roles, &request.subclass, &request.cmd);
    if access == Access::Denied {
        return Some(encode(&tid, Err(ApiError::unauthorized().into())));
    }
    let own_user_only = access == Access::OwnUserOnly;
    let result = match (request.subclass.as_str(), request.cmd.as_str()) {
        ("user", "list") => commands::user::list(gateway, state).await,
        ("user", "get") => commands::user::get(gateway, state, &request.data).await,
        ("user", "send_event") => {
            let publish = commands::user::send_event(gateway, state, &request.data);
            return commands::submit_publish(gateway, state, tid, publish).await;
        }
        ("session", "stop") => {
            commands::session::stop(gateway, state, &identity, own_user_only, &request.data).await
        }
        ("session", "send_event") => {
            let publish = commands::session::send_event(gateway, state, &request.data);
            return commands::submit_publish(gateway, state, tid, publish).await;
        }
        ("session", "cmd") => {
            return commands::session::cmd(gateway, state, &identity, own_user_only, request);
        }
        ("session", "log") => commands::session::log(gateway, state, &identity, &request.data),
        ("session" | "core", "ping") => Ok(commands::session::ping()),
        ("event", "subscribe") => {
            return commands::event::subscribe(gateway, state, &identity, &tid, &request.data)
                .await;
        }
        ("event", "unsubscribe") => {
            commands::event::unsubscribe(gateway, state, &request.data).await
        }
        ("event", "get_subscriptions") => Ok(commands::event::get_subscriptions(state)),
        ("event", "send_event" | "send") => {
            let publish = commands::event::send_event(gateway, state, &identity, &request.data);
            return commands::submit_publish(gateway, state, tid, publish).await;
        }
        _ => Err(unknown_command(&request).into()),
    };
    Some(encode(&tid, result))
}
