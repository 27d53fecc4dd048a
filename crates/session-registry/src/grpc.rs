//! The `SessionRegistry` gRPC adapter and the reaper.

use std::future::Future;

use switchboard_proto::calls::{self, Answers};
use switchboard_proto::internal::InternalSecret;
use switchboard_proto::v1::session_registry_server::{SessionRegistry, SessionRegistryServer};
use switchboard_proto::v1::{
    GatewaySessionsReply, GatewaySessionsRequest, GetUserReply, GetUserRequest, HeartbeatReply,
    HeartbeatRequest, ListGatewaysReply, ListGatewaysRequest, ListUsersReply, ListUsersRequest,
    LookupReply, LookupRequest, RegisterAnswer, RegisterCall, RegisterReply, RegisterRequest,
    RelearnReply, RelearnRequest, UnregisterManyRequest, UnregisterReply, UnregisterRequest,
    UserSessions,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::config::Config;
use crate::metrics::METRICS;
use crate::presence::reason;

/// Users or session ids in one page of `ListUsers` or `GatewaySessions` when the caller
/// names no limit; a page stays far below the message limit.
pub const PAGE_DEFAULT: usize = 1000;
/// The most a caller may ask for in one page.
pub const PAGE_MAX: usize = 10_000;
/// The most sessions one `Relearn` or `UnregisterMany` call may carry.
pub const BATCH_MAX: usize = 10_000;

fn check_batch(sessions: usize) -> Result<(), Status> {
    if sessions > BATCH_MAX {
        return Err(Status::invalid_argument(format!(
            "at most {BATCH_MAX} sessions per call"
        )));
    }
    Ok(())
}

fn page_limit(asked: u32) -> usize {
    match asked as usize {
        0 => PAGE_DEFAULT,
        asked => asked.min(PAGE_MAX),
    }
}
use crate::store::{RegistryError, Store};

/// The tonic service around a [`Store`].
#[derive(Debug, Clone)]
pub struct GrpcRegistryService {
    store: Store,
    max_sessions_per_user: usize,
    /// `ListGateways` names the gateways heard from within this long.
    gateway_timeout: std::time::Duration,
    /// Cancelled when the server shuts down: its `RegisterStream`s end.
    closing: CancellationToken,
}

impl GrpcRegistryService {
    /// Wraps a store; a user may hold `max_sessions_per_user` sessions per service (0: any).
    pub fn new(store: Store, max_sessions_per_user: usize) -> Self {
        Self {
            store,
            max_sessions_per_user,
            gateway_timeout: crate::config::DEFAULT_GATEWAY_TIMEOUT,
            closing: CancellationToken::new(),
        }
    }

    /// `ListGateways` names the gateways heard from within `timeout` (the reaper's).
    #[must_use]
    pub fn with_gateway_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.gateway_timeout = timeout;
        self
    }
}

impl From<RegistryError> for Status {
    fn from(error: RegistryError) -> Self {
        match error {
            RegistryError::DuplicateSession => Status::already_exists("session id in use"),
            RegistryError::TooManySessions => {
                Status::resource_exhausted("the user has the most sessions allowed")
            }
            RegistryError::NotFound => Status::not_found("not found"),
            RegistryError::Unavailable(reason) => {
                tracing::warn!(%reason, "registry store unavailable");
                Status::unavailable("registry store unavailable")
            }
        }
    }
}

#[tonic::async_trait]
impl SessionRegistry for GrpcRegistryService {
    type RegisterStreamStream = Answers<RegisterAnswer>;

    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        let request = request.into_inner();
        let session = request
            .session
            .ok_or_else(|| Status::invalid_argument("session is required"))?;
        if session.session_id.is_empty() {
            return Err(Status::invalid_argument("session_id is required"));
        }
        let registered = self
            .store
            .register_limited(session, self.max_sessions_per_user, &request.takeover_hash)
            .await;
        let label = crate::metrics::outcome(&registered);
        METRICS
            .registrations
            .get_or_create(&[("result", label)])
            .inc();
        let previous = registered?;
        Ok(Response::new(RegisterReply { previous }))
    }

    async fn register_stream(
        &self,
        request: Request<Streaming<RegisterCall>>,
    ) -> Result<Response<Self::RegisterStreamStream>, Status> {
        let service = self.clone();
        Ok(Response::new(calls::serve(
            request.into_inner(),
            self.closing.clone(),
            move |register: RegisterRequest| {
                let service = service.clone();
                async move {
                    service
                        .register(Request::new(register))
                        .await
                        .map(Response::into_inner)
                }
            },
        )))
    }

    async fn unregister(
        &self,
        request: Request<UnregisterRequest>,
    ) -> Result<Response<UnregisterReply>, Status> {
        let request = request.into_inner();
        self.store
            .unregister(&request.session_id, &request.gateway_id)
            .await?;
        Ok(Response::new(UnregisterReply {}))
    }

    async fn unregister_many(
        &self,
        request: Request<UnregisterManyRequest>,
    ) -> Result<Response<UnregisterReply>, Status> {
        let request = request.into_inner();
        check_batch(request.session_ids.len())?;
        let fallback = if request.gateway_id.is_empty() {
            reason::STOPPED
        } else {
            reason::CLOSED
        };
        let sessions: Vec<(&str, &str)> = request
            .session_ids
            .iter()
            .enumerate()
            .map(|(index, id)| {
                let why = request
                    .reasons
                    .get(index)
                    .map(String::as_str)
                    .filter(|why| reason::is_known(why))
                    .unwrap_or(fallback);
                (id.as_str(), why)
            })
            .collect();
        self.store
            .unregister_with_reasons(&sessions, &request.gateway_id)
            .await?;
        Ok(Response::new(UnregisterReply {}))
    }

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersReply>, Status> {
        let request = request.into_inner();
        let page = self
            .store
            .list_users(&request.service, &request.cursor, page_limit(request.limit))
            .await?;
        let users = page
            .items
            .into_iter()
            .map(|(user, session_ids)| UserSessions { user, session_ids })
            .collect();
        Ok(Response::new(ListUsersReply {
            users,
            next_cursor: page.next,
        }))
    }

    async fn get_user(
        &self,
        request: Request<GetUserRequest>,
    ) -> Result<Response<GetUserReply>, Status> {
        let request = request.into_inner();
        let sessions = self.store.get_user(&request.service, &request.user).await?;
        Ok(Response::new(GetUserReply { sessions }))
    }

    async fn lookup(
        &self,
        request: Request<LookupRequest>,
    ) -> Result<Response<LookupReply>, Status> {
        let session = self.store.lookup(&request.into_inner().session_id).await?;
        Ok(Response::new(LookupReply {
            session: Some(session),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let request = request.into_inner();
        let held = self
            .store
            .heartbeat(&request.gateway_id, &request.control_addr)
            .await;
        let label = crate::metrics::outcome(&held);
        METRICS
            .heartbeats
            .get_or_create(&[("outcome", label)])
            .inc();
        let held = held?;
        Ok(Response::new(HeartbeatReply {
            session_count: held.count,
            digest: held.digest,
        }))
    }

    async fn list_gateways(
        &self,
        _request: Request<ListGatewaysRequest>,
    ) -> Result<Response<ListGatewaysReply>, Status> {
        let gateways = self.store.list_gateways(self.gateway_timeout).await?;
        Ok(Response::new(ListGatewaysReply { gateways }))
    }

    async fn gateway_sessions(
        &self,
        request: Request<GatewaySessionsRequest>,
    ) -> Result<Response<GatewaySessionsReply>, Status> {
        let request = request.into_inner();
        let page = self
            .store
            .gateway_sessions(
                &request.gateway_id,
                &request.cursor,
                page_limit(request.limit),
            )
            .await?;
        Ok(Response::new(GatewaySessionsReply {
            session_ids: page.items,
            next_cursor: page.next,
        }))
    }

    async fn relearn(
        &self,
        request: Request<RelearnRequest>,
    ) -> Result<Response<RelearnReply>, Status> {
        let sessions = request.into_inner().sessions;
        check_batch(sessions.len())?;
        if sessions.iter().any(|session| session.session_id.is_empty()) {
            return Err(Status::invalid_argument("session_id is required"));
        }
        let refused = self.store.relearn(sessions).await?;
        Ok(Response::new(RelearnReply { refused }))
    }
}

/// Serves the registry over `store` on `listener` until `shutdown` is cancelled, reaping
/// silent gateways.
///
/// # Errors
/// Returns the transport error that stopped the server.
pub async fn serve(
    config: Config,
    store: Store,
    listener: TcpListener,
    secret: InternalSecret,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let reaper = tokio::spawn(reap_until(store.clone(), config.clone(), shutdown.clone()));
    let service = GrpcRegistryService::new(store.clone(), config.max_sessions_per_user)
        .with_gateway_timeout(config.gateway_timeout);
    let result = serve_service(service, listener, secret, shutdown.cancelled_owned()).await;
    reaper.abort();
    result
}

/// Serves `service` (tests and embedding) until `shutdown` completes, without a reaper.
///
/// # Errors
/// Returns the transport error that stopped the server.
pub async fn serve_service(
    service: GrpcRegistryService,
    listener: TcpListener,
    secret: InternalSecret,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let closing = service.closing.clone();
    tonic::transport::Server::builder()
        .layer(secret.server_layer())
        .layer(switchboard_proto::observe::ServerTraceLayer)
        // grpc.health.v1: SERVING while the server runs (behind the secret like the rest).
        .add_service(tonic_health::server::health_reporter().1)
        .add_service(
            SessionRegistryServer::new(service)
                .max_decoding_message_size(switchboard_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(switchboard_proto::MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            calls::close_streams_on(shutdown, closing),
        )
        .await
}

async fn reap_until(store: Store, config: Config, shutdown: CancellationToken) {
    let period = (config.gateway_timeout / 4).max(std::time::Duration::from_millis(100));
    let mut interval = tokio::time::interval(period);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {
                let outcome = match store.reap(config.gateway_timeout).await {
                    Ok(0) => "idle",
                    Ok(reaped) => {
                        METRICS.reaped_sessions.inc_by(reaped as u64);
                        tracing::warn!(sessions = reaped, "reaped sessions of a silent gateway");
                        "reaped"
                    }
                    Err(error) => {
                        tracing::debug!(?error, "reaper could not reach the store");
                        "unavailable"
                    }
                };
                METRICS.reaps.get_or_create(&[("outcome", outcome)]).inc();
            }
        }
    }
}
