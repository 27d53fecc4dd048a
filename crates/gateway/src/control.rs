//! `SessionControl`: what other replicas and backends may ask of this gateway's sessions.

use std::sync::Arc;

use serde_json::Value;
use switchboard_proto::v1::session_control_server::SessionControl;
use switchboard_proto::v1::{
    CmdReply, CmdRequest, StatsReply, StatsRequest, StopReply, StopRequest,
};
use switchboard_protocol::{ApiError, ErrorCode};
use tonic::{Request, Response, Status};

use crate::gateway::Gateway;
use crate::server_request;

/// The tonic service over the gateway's local sessions.
#[derive(Debug, Clone)]
pub struct GrpcSessionControl {
    gateway: Arc<Gateway>,
}

impl GrpcSessionControl {
    /// Serves the sessions of `gateway`.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

fn to_status(error: ApiError) -> Status {
    match error.code {
        ErrorCode::SessionNotFound => Status::not_found(error.message),
        ErrorCode::SessionStopped => Status::aborted(error.message),
        ErrorCode::Timeout => Status::deadline_exceeded(error.message),
        _ => Status::internal("internal error"),
    }
}

#[tonic::async_trait]
impl SessionControl for GrpcSessionControl {
    async fn stop(&self, request: Request<StopRequest>) -> Result<Response<StopReply>, Status> {
        let request = request.into_inner();
        let user = if request.taken_over {
            self.gateway.end_taken_over(&request.session_id)
        } else {
            self.gateway.stop(&request.session_id).await
        }
        .map_err(to_status)?;
        Ok(Response::new(StopReply { user }))
    }

    async fn cmd(&self, request: Request<CmdRequest>) -> Result<Response<CmdReply>, Status> {
        let request = request.into_inner();
        let data: Value = if request.data_json.is_empty() {
            Value::Object(Default::default())
        } else {
            serde_json::from_str(&request.data_json)
                .map_err(|_| Status::invalid_argument("data_json is not JSON"))?
        };
        let subclass = if request.subclass.is_empty() {
            "core"
        } else {
            &request.subclass
        };
        let answer = self
            .gateway
            .session_cmd(
                &request.session_id,
                server_request::CmdRequest {
                    class: &request.class,
                    subclass,
                    cmd: &request.cmd,
                    data: &data,
                },
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(CmdReply {
            ok: answer.ok,
            data_json: answer.data.to_string(),
        }))
    }

    async fn stats(&self, _request: Request<StatsRequest>) -> Result<Response<StatsReply>, Status> {
        Ok(Response::new(self.gateway.stats()))
    }
}
