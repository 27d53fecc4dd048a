//! The `Auth` gRPC adapter.

use std::future::Future;

use switchboard_proto::calls::{self, Answers};
use switchboard_proto::internal::InternalSecret;
use switchboard_proto::v1::auth_server::{Auth, AuthServer};
use switchboard_proto::v1::{LoginAnswer, LoginCall, LoginReply, LoginRequest};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::service::{Attempt, AuthError, Authenticator};

/// The tonic service around an [`Authenticator`].
#[derive(Debug, Clone)]
pub struct GrpcAuthService {
    authenticator: Authenticator,
    /// Cancelled when the server shuts down: its `LoginStream`s end.
    closing: CancellationToken,
}

impl GrpcAuthService {
    /// Wraps an authenticator.
    pub fn new(authenticator: Authenticator) -> Self {
        Self {
            authenticator,
            closing: CancellationToken::new(),
        }
    }
}

impl From<AuthError> for Status {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::InvalidCredentials => Status::unauthenticated("invalid credentials"),
            AuthError::TooManyAttempts => {
                Status::resource_exhausted("too many failed logins from this address")
            }
        }
    }
}

#[tonic::async_trait]
impl Auth for GrpcAuthService {
    type LoginStreamStream = Answers<LoginAnswer>;

    async fn login(&self, request: Request<LoginRequest>) -> Result<Response<LoginReply>, Status> {
        let request = request.into_inner();
        let started = std::time::Instant::now();
        let identity = self
            .authenticator
            .login(Attempt {
                user: &request.user,
                password: &request.password,
                session_id: &request.session_id,
                remote: &request.remote,
            })
            .await
            .inspect_err(|error| {
                let result = match error {
                    AuthError::InvalidCredentials => "invalid_credentials",
                    AuthError::TooManyAttempts => "too_many_attempts",
                };
                crate::metrics::METRICS.checked(started, result);
                tracing::info!(user = %request.user, remote = %request.remote, ?error, "login refused");
            })?;
        crate::metrics::METRICS.checked(started, "ok");
        tracing::debug!(user = %identity.user, session.id = %identity.session_id, "login accepted");
        Ok(Response::new(LoginReply {
            user: identity.user,
            session_id: identity.session_id,
            roles: identity.roles,
            expires_at: identity.expires_at.unwrap_or_default(),
        }))
    }

    async fn login_stream(
        &self,
        request: Request<Streaming<LoginCall>>,
    ) -> Result<Response<Self::LoginStreamStream>, Status> {
        let service = self.clone();
        Ok(Response::new(calls::serve(
            request.into_inner(),
            self.closing.clone(),
            move |login: LoginRequest| {
                let service = service.clone();
                async move {
                    service
                        .login(Request::new(login))
                        .await
                        .map(Response::into_inner)
                }
            },
        )))
    }
}

/// Serves `authenticator` on `listener` until `shutdown` completes.
///
/// # Errors
/// Returns the transport error that stopped the server.
pub async fn serve(
    authenticator: Authenticator,
    listener: TcpListener,
    secret: InternalSecret,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let service = GrpcAuthService::new(authenticator);
    let closing = service.closing.clone();
    tonic::transport::Server::builder()
        .layer(secret.server_layer())
        .layer(switchboard_proto::observe::ServerTraceLayer)
        // grpc.health.v1: SERVING while the server runs (behind the secret like the rest).
        .add_service(tonic_health::server::health_reporter().1)
        .add_service(
            AuthServer::new(service)
                .max_decoding_message_size(switchboard_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(switchboard_proto::MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            calls::close_streams_on(shutdown, closing),
        )
        .await
}
