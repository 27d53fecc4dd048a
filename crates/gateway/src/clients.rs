//! gRPC clients of the internal services, each call with a deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use switchboard_proto::MAX_MESSAGE_BYTES;
use switchboard_proto::calls::CallStream;
use switchboard_proto::internal::{InternalSecret, SecuredChannel};
use switchboard_proto::v1::auth_client::AuthClient;
use switchboard_proto::v1::event_bus_client::EventBusClient;
use switchboard_proto::v1::session_control_client::SessionControlClient;
use switchboard_proto::v1::session_registry_client::SessionRegistryClient;
use switchboard_proto::v1::{
    LoginAnswer, LoginCall, OpenStreamsRequest, ReadHistoryRequest, RegisterAnswer, RegisterCall,
    StreamPosition,
};
use switchboard_protocol::{ApiError, ErrorCode};
use switchboard_sync::Lock;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::positioned::{HistoryPage, HistorySource};

/// Most SessionControl clients (one per other gateway) kept for reuse.
pub const MAX_CONTROL_CLIENTS: usize = 256;

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("invalid service address {address:?}: {source}")]
pub struct AddressError {
    address: String,
    #[source]
    source: tonic::transport::Error,
}

fn lazy_channel(address: &str) -> Result<Channel, AddressError> {
    let url = if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    Endpoint::from_shared(url)
        .map(|endpoint| {
            endpoint
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                // Login, register and publish streams stay open between calls: a connection
                // cut off without a reset is noticed by its pings, not only by a call timing out.
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true)
                .connect_lazy()
        })
        .map_err(|source| AddressError {
            address: address.to_owned(),
            source,
        })
}

/// Clients of auth, registry, bus and other gateways' SessionControl.
#[derive(Debug, Clone)]
pub struct Services {
    /// Logins to the auth service, over one long-lived `LoginStream` (each with the
    /// `rpc_timeout` deadline).
    pub logins: Arc<CallStream<LoginCall, LoginAnswer>>,
    /// Session registry.
    pub registry: SessionRegistryClient<SecuredChannel>,
    /// Registrations, over one long-lived `RegisterStream` (each with the `rpc_timeout`
    /// deadline).
    pub registrations: Arc<CallStream<RegisterCall, RegisterAnswer>>,
    /// Event bus.
    pub bus: EventBusClient<SecuredChannel>,
    controls: Arc<Mutex<HashMap<String, SessionControlClient<SecuredChannel>>>>,
    /// `grpc.health.v1` of auth, registry and bus, for readiness.
    health: Arc<[(&'static str, HealthClient<SecuredChannel>)]>,
    secret: InternalSecret,
    /// Deadline of every call but `session cmd`.
    pub rpc_timeout: Duration,
}

impl Services {
    /// Creates lazily-connecting clients carrying `secret`; nothing is dialled until the
    /// first call.
    ///
    /// # Errors
    /// [`AddressError`] for an address that is not a valid URI.
    pub fn new(
        auth_url: &str,
        registry_url: &str,
        bus_url: &str,
        rpc_timeout: Duration,
        secret: &InternalSecret,
    ) -> Result<Self, AddressError> {
        let (auth_channel, registry_channel, bus_channel) = (
            secret.channel(lazy_channel(auth_url)?),
            secret.channel(lazy_channel(registry_url)?),
            secret.channel(lazy_channel(bus_url)?),
        );
        let health = Arc::from([
            ("auth", HealthClient::new(auth_channel.clone())),
            ("registry", HealthClient::new(registry_channel.clone())),
            ("bus", HealthClient::new(bus_channel.clone())),
        ]);
        let auth = AuthClient::new(auth_channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let registry = SessionRegistryClient::new(registry_channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let logins = CallStream::new(rpc_timeout, move |calls| {
            let mut auth = auth.clone();
            Box::pin(async move { Ok(auth.login_stream(calls).await?.into_inner()) })
        })
        .named("Auth", "Login");
        let registrations = {
            let registry = registry.clone();
            CallStream::new(rpc_timeout, move |calls| {
                let mut registry = registry.clone();
                Box::pin(async move { Ok(registry.register_stream(calls).await?.into_inner()) })
            })
            .named("SessionRegistry", "Register")
        };
        Ok(Self {
            logins: Arc::new(logins),
            registry,
            registrations: Arc::new(registrations),
            bus: EventBusClient::new(bus_channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            controls: Arc::new(Mutex::new(HashMap::new())),
            health,
            secret: secret.clone(),
            rpc_timeout,
        })
    }

    /// Asks auth, registry and bus whether they serve (`grpc.health.v1`), at once; the
    /// failures, each with its service's name.
    pub async fn unhealthy(&self) -> Vec<(&'static str, String)> {
        let checks = self.health.iter().map(|(name, client)| {
            let mut client = client.clone();
            let request = self.request(HealthCheckRequest::default());
            async move {
                match client.check(request).await {
                    Ok(reply) if reply.get_ref().status == ServingStatus::Serving as i32 => None,
                    Ok(reply) => Some((*name, format!("status {}", reply.get_ref().status))),
                    Err(status) => {
                        Some((*name, format!("{:?}: {}", status.code(), status.message())))
                    }
                }
            }
        });
        futures_util::future::join_all(checks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Wraps `message` in a request carrying the default deadline.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.rpc_timeout);
        request
    }

    /// Returns the SessionControl client of the gateway at `address`, from a cache of at most
    /// [`MAX_CONTROL_CLIENTS`].
    ///
    /// # Errors
    /// `internal_error` when the registry holds an invalid address.
    pub fn control(&self, address: &str) -> Result<SessionControlClient<SecuredChannel>, ApiError> {
        let mut controls = self.controls.locked();
        if let Some(client) = controls.get(address) {
            return Ok(client.clone());
        }
        let channel = lazy_channel(address).map_err(|error| {
            tracing::error!(%error, "bad gateway address in the registry");
            ApiError::new(ErrorCode::InternalError, "bad gateway address")
        })?;
        let client = SessionControlClient::new(self.secret.channel(channel))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        if controls.len() >= MAX_CONTROL_CLIENTS {
            // Gateways come and go (each restart has a new address): forget one, so the
            // cache holds the live ones and never grows without bound.
            if let Some(old) = controls.keys().next().cloned() {
                controls.remove(&old);
            }
        }
        controls.insert(address.to_owned(), client.clone());
        Ok(client)
    }
}

/// Maps a failed internal call to the client's answer; `service` names the callee.
pub fn status_to_api_error(status: &Status, service: &str) -> ApiError {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            tracing::warn!(service, code = ?status.code(), "internal call failed");
            ApiError::unavailable(service)
        }
        Code::PermissionDenied => ApiError::unauthorized(),
        Code::InvalidArgument => ApiError::new(ErrorCode::SyntaxError, status.message()),
        code => {
            let reference = uuid::Uuid::new_v4();
            tracing::error!(service, ?code, message = status.message(), %reference, "unexpected internal error");
            ApiError::new(
                ErrorCode::InternalError,
                format!("internal error, reference {reference}"),
            )
        }
    }
}

impl Services {
    /// Opens (or keeps alive) the positioned streams of `channels`, one position each.
    ///
    /// # Errors
    /// `unavailable` when the bus cannot be reached.
    pub async fn open_streams(
        &self,
        channels: Vec<String>,
    ) -> Result<Vec<StreamPosition>, ApiError> {
        let mut bus = self.bus.clone();
        let reply = bus
            .open_streams(self.request(OpenStreamsRequest { channels }))
            .await
            .map_err(|status| status_to_api_error(&status, "event bus"))?;
        Ok(reply.into_inner().streams)
    }
}

impl HistorySource for Services {
    fn read(
        &self,
        channel: String,
        epoch: String,
        after: u64,
        max: u64,
    ) -> BoxFuture<'static, Result<HistoryPage, ApiError>> {
        let mut bus = self.bus.clone();
        let request = self.request(ReadHistoryRequest {
            channel,
            epoch,
            after,
            max,
            page: 0,
        });
        Box::pin(async move {
            let reply = bus
                .read_history(request)
                .await
                .map_err(|status| status_to_api_error(&status, "event bus"))?
                .into_inner();
            Ok(HistoryPage {
                recoverable: reply.recoverable,
                top: reply.top,
                payloads: reply.payloads,
            })
        })
    }
}
