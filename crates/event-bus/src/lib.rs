//! The event bus service: the `EventBus` gRPC service (`proto/switchboard/v1/bus.proto`)
//! around the publish path of [`switchboard_publish`] (validate, authorise, prepare, publish
//! to the channels of the at most 8 subscription keys that can match an event), publishing
//! into a [`switchboard_broker::Broker`]. Stateless: scale it freely.
//!
//! # Layout
//! - [`grpc`]: [`GrpcEventBus`], the tonic adapter (refusals to statuses and results), and
//!   [`serve`].
//! - [`metrics`]: events by result, the broker's publish time.

pub mod grpc;
pub mod metrics;

pub use grpc::{GrpcEventBus, serve};
