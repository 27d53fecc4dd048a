//! The bus over real gRPC: Publish, PublishBatch (per-event refusals) and PublishStream
//! (replies in order), delivering into an in-memory broker.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use switchboard_broker::{Broker, Deliver, MemoryBroker};
use switchboard_proto::internal::InternalSecret;
use switchboard_proto::v1::event_bus_client::EventBusClient;
use switchboard_proto::v1::{Event, PublishBatchRequest, PublishRequest};
use switchboard_protocol::event::EventKey;
use switchboard_protocol::policy::Policy;
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Deliver for Recorder {
    fn deliver(&self, _channel: &str, payload: &Bytes) {
        self.0
            .lock()
            .expect("lock")
            .push(String::from_utf8_lossy(payload).into_owned());
    }
}

fn event(class: &str, body: &str) -> PublishRequest {
    PublishRequest {
        event: Some(Event {
            class: class.into(),
            body_json: body.into(),
            ..Event::default()
        }),
        roles: vec![],
        publisher_service: String::new(),
        trusted: false,
    }
}

#[tokio::test]
async fn publish_batch_and_stream() {
    let broker = Broker::Memory(MemoryBroker::new());
    let recorder = Arc::new(Recorder::default());
    let subscriber = broker.subscriber(recorder.clone());
    let channel = EventKey {
        service: String::new(),
        class: "media".into(),
        subclass: "*".into(),
        type_: "*".into(),
        obj_id: "*".into(),
    }
    .channel();
    subscriber.subscribe(&channel).await.expect("subscribe");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let shutdown = CancellationToken::new();
    let secret = InternalSecret::new("bus-test-secret-0123456789").expect("secret");
    let server = tokio::spawn(switchboard_event_bus::serve(
        broker.clone(),
        Arc::new(Policy::default()),
        listener,
        secret.clone(),
        shutdown.clone().cancelled_owned(),
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut stranger = EventBusClient::new(channel.clone());
    let refused = stranger
        .publish(event("media", "{}"))
        .await
        .expect_err("a call without the internal credential is refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let mut client = EventBusClient::new(secret.channel(channel));

    client
        .publish(event("media", r#"{"n":0}"#))
        .await
        .expect("publish");
    let refused = client
        .publish(event("core", ""))
        .await
        .expect_err("core is refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        client
            .publish(event("media", "{not json"))
            .await
            .expect_err("bad body")
            .code(),
        tonic::Code::InvalidArgument
    );

    let reply = client
        .publish_batch(PublishBatchRequest {
            events: vec![
                event("media", r#"{"n":1}"#),
                event("core", ""),
                event("media", r#"{"n":2}"#),
            ],
        })
        .await
        .expect("batch")
        .into_inner();
    let oks: Vec<bool> = reply.results.iter().map(|r| r.ok).collect();
    assert_eq!(oks, vec![true, false, true]);
    assert_eq!(
        reply.results[1].refusal(),
        switchboard_proto::v1::RefusalCode::Denied
    );

    let (batches_tx, batches_rx) = tokio::sync::mpsc::channel(4);
    let mut replies = client
        .publish_stream(ReceiverStream::new(batches_rx))
        .await
        .expect("stream")
        .into_inner();
    for n in 3..6 {
        batches_tx
            .send(PublishBatchRequest {
                events: vec![event("media", &format!(r#"{{"n":{n}}}"#))],
            })
            .await
            .expect("send");
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .expect("reply in time")
            .expect("reply")
            .expect("one reply per batch");
        assert!(reply.results[0].ok);
    }
    let seen = recorder.0.lock().expect("lock").clone();
    let bodies: Vec<serde_json::Value> = seen
        .iter()
        .map(|payload| {
            serde_json::from_str::<serde_json::Value>(payload).expect("JSON")["body"]["n"].clone()
        })
        .collect();
    assert_eq!(
        bodies,
        (0..6).map(serde_json::Value::from).collect::<Vec<_>>(),
        "every event, in order"
    );
    shutdown.cancel();
    drop(batches_tx);
    let _ = server.await;
}
