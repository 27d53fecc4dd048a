//! Positioned subscriptions and recovery (PROTOCOL.md §10) in one process: offsets, replay
//! after the reply, wrong epochs, recovering too far back, body merge on replay.

use serde_json::{Value, json};

use crate::common::{Client, start, start_with};

/// Sends `event subscribe` and returns every frame up to and including its reply, in the
/// order they arrived (so a test can check nothing came before the reply).
async fn subscribe_raw(client: &mut Client, data: Value) -> (Value, Vec<Value>) {
    let tid = 9_000_u64;
    client
        .send_json(&json!({"class": "core", "subclass": "event", "cmd": "subscribe", "data": data, "tid": tid}))
        .await;
    let mut before = Vec::new();
    loop {
        let frame = client.next().await;
        if frame.get("result").is_some() && frame["tid"] == tid {
            return (frame, before);
        }
        before.push(frame);
    }
}

async fn publish(client: &mut Client, n: u64) {
    client
        .ok(
            "event",
            "send_event",
            json!({"class": "media", "type": "frame", "body": {"n": n}}),
        )
        .await;
}

/// The next event frame (with its `pos`).
async fn event_frame(client: &mut Client) -> Value {
    let frame = client.next().await;
    assert_eq!(frame["cmd"], "event", "expected an event: {frame}");
    frame
}

#[tokio::test]
async fn positioned_events_carry_offsets_and_a_new_connection_recovers() {
    let running = start().await;
    let mut first = Client::admin(&running).await;
    let opened = first
        .ok(
            "event",
            "subscribe",
            json!({"class": "media", "recover": true}),
        )
        .await;
    assert_eq!(opened["offset"], 0, "{opened}");
    let (stream, epoch) = (opened["stream"].clone(), opened["epoch"].clone());
    assert!(stream.as_str().is_some_and(|s| !s.is_empty()) && epoch.is_string());
    let mut plain = Client::admin(&running).await;
    plain
        .ok("event", "subscribe", json!({"class": "media"}))
        .await;

    let mut publisher = Client::admin(&running).await;
    for n in 1..=3 {
        publish(&mut publisher, n).await;
    }
    for n in 1..=3_u64 {
        let frame = event_frame(&mut first).await;
        assert_eq!(
            frame["pos"],
            json!({"stream": stream, "epoch": epoch, "offset": n})
        );
        assert_eq!(frame["data"]["body"]["n"], n);
        let frame = event_frame(&mut plain).await;
        assert!(
            frame.get("pos").is_none(),
            "plain subscriptions get no pos: {frame}"
        );
    }

    // Another connection that saw offset 1 gets 2 and 3 after its reply, then live events.
    let mut second = Client::admin(&running).await;
    let (reply, before) = subscribe_raw(
        &mut second,
        json!({"class": "media", "recover": {"epoch": epoch, "offset": 1}}),
    )
    .await;
    assert!(before.is_empty(), "nothing before the reply: {before:?}");
    assert_eq!(reply["result"], "ok", "{reply}");
    assert_eq!(reply["data"]["recovered"], true);
    assert_eq!(reply["data"]["missed"], 2);
    assert_eq!(reply["data"]["offset"], 3);
    for n in 2..=3_u64 {
        let frame = event_frame(&mut second).await;
        assert_eq!(frame["pos"]["offset"], n);
        assert_eq!(frame["data"]["body"]["n"], n);
    }
    publish(&mut publisher, 4).await;
    assert_eq!(event_frame(&mut second).await["pos"]["offset"], 4);
    assert_eq!(event_frame(&mut first).await["pos"]["offset"], 4);
    second.assert_quiet().await;
}

#[tokio::test]
async fn wrong_epoch_or_too_far_back_is_not_recovered() {
    let running = start_with(|config| config.gateway.max_recover = 2).await;
    let mut first = Client::admin(&running).await;
    let opened = first
        .ok(
            "event",
            "subscribe",
            json!({"class": "media", "recover": true}),
        )
        .await;
    let epoch = opened["epoch"].clone();
    let mut publisher = Client::admin(&running).await;
    for n in 1..=3 {
        publish(&mut publisher, n).await;
    }
    for _ in 1..=3 {
        event_frame(&mut first).await;
    }
    for (recover, why) in [
        (
            json!({"epoch": "not-the-epoch", "offset": 1}),
            "another epoch",
        ),
        (
            json!({"epoch": epoch, "offset": 0}),
            "3 missed, max_recover 2",
        ),
        (
            json!({"epoch": epoch, "offset": 9}),
            "an offset beyond the top",
        ),
    ] {
        let mut late = Client::admin(&running).await;
        let answer = late
            .ok(
                "event",
                "subscribe",
                json!({"class": "media", "recover": recover}),
            )
            .await;
        assert_eq!(answer["recovered"], false, "{why}: {answer}");
        assert!(answer.get("missed").is_none(), "{why}: {answer}");
        late.assert_quiet().await;
    }
    // Within max_recover: recovered.
    let mut late = Client::admin(&running).await;
    let answer = late
        .ok(
            "event",
            "subscribe",
            json!({"class": "media", "recover": {"epoch": epoch, "offset": 1}}),
        )
        .await;
    assert_eq!(answer["recovered"], true, "{answer}");
    let code = late
        .error_code(
            "event",
            "subscribe",
            json!({"class": "media", "recover": "yes"}),
        )
        .await;
    assert_eq!(code, "syntax_error");
}

#[tokio::test]
async fn replayed_events_are_merged_with_the_subscription_body() {
    let running = start().await;
    let mut first = Client::admin(&running).await;
    let opened = first
        .ok(
            "event",
            "subscribe",
            json!({"class": "media", "recover": true}),
        )
        .await;
    let mut publisher = Client::admin(&running).await;
    publish(&mut publisher, 1).await;
    event_frame(&mut first).await;
    let mut late = Client::admin(&running).await;
    let answer = late
        .ok(
            "event",
            "subscribe",
            json!({"class": "media", "body": {"room": "a", "n": 0},
                   "recover": {"epoch": opened["epoch"], "offset": 0}}),
        )
        .await;
    assert_eq!(answer["missed"], 1, "{answer}");
    let replayed = event_frame(&mut late).await;
    assert_eq!(replayed["data"]["body"], json!({"room": "a", "n": 1}));
    // Subscribing again without `recover` makes it plain.
    late.ok("event", "subscribe", json!({"class": "media"}))
        .await;
    publish(&mut publisher, 2).await;
    let live = event_frame(&mut late).await;
    assert!(live.get("pos").is_none(), "{live}");
}

#[tokio::test]
async fn positioned_subscriptions_count_against_the_limit() {
    let running = start_with(|config| config.gateway.max_subscriptions = 3).await;
    // The login's two automatic subscriptions count too.
    let mut client = Client::admin(&running).await;
    client
        .ok("event", "subscribe", json!({"class": "a", "recover": true}))
        .await;
    let code = client
        .error_code("event", "subscribe", json!({"class": "b", "recover": true}))
        .await;
    assert_eq!(code, "limit_exceeded");
}

/// A stream used by a positioned subscription outlives `history_ttl`: the gateway keeps it
/// alive, so its epoch and offsets go on.
#[tokio::test]
async fn a_gateway_keeps_its_positioned_streams_alive() {
    let ttl = std::time::Duration::from_secs(3);
    let running = start_with(|config| {
        config.streams.history_ttl = ttl;
        config.gateway.history_ttl = ttl;
    })
    .await;
    let mut subscriber = Client::admin(&running).await;
    let opened = subscriber
        .ok(
            "event",
            "subscribe",
            json!({"class": "media", "recover": true}),
        )
        .await;
    let mut publisher = Client::admin(&running).await;
    publish(&mut publisher, 1).await;
    assert_eq!(event_frame(&mut subscriber).await["pos"]["offset"], 1);
    tokio::time::sleep(ttl + std::time::Duration::from_secs(2)).await;
    publish(&mut publisher, 2).await;
    let frame = event_frame(&mut subscriber).await;
    assert_eq!(frame["pos"]["epoch"], opened["epoch"], "{frame}");
    assert_eq!(frame["pos"]["offset"], 2, "{frame}");
}
