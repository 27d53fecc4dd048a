//! Calls over one long-lived stream, against a real tonic server on loopback: answers find
//! their callers whatever their order, a stopped server fails calls fast, a restarted one is
//! found again, and a call that times out does not leave the caller stuck on a dead stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use switchboard_proto::calls::{self, Answers, CallStream};
use switchboard_proto::v1::auth_client::AuthClient;
use switchboard_proto::v1::auth_server::{Auth, AuthServer};
use switchboard_proto::v1::{LoginAnswer, LoginCall, LoginReply, LoginRequest};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status, Streaming};

/// Answers a login after sleeping the milliseconds its password names; refuses user
/// "nobody"; panics for user "panic".
#[derive(Clone, Default)]
struct SleepyAuth {
    streams_opened: Arc<AtomicUsize>,
    logins_finished: Arc<AtomicUsize>,
    closing: CancellationToken,
    /// The first stream never answers (as if its connection were cut off without a reset).
    stall_first_stream: bool,
    stalled: Arc<std::sync::Mutex<Vec<AnswerSender>>>,
}

/// Holds a stalled stream open without ever answering on it.
type AnswerSender = tokio::sync::mpsc::Sender<Result<LoginAnswer, Status>>;

#[tonic::async_trait]
impl Auth for SleepyAuth {
    type LoginStreamStream = Answers<LoginAnswer>;

    async fn login(&self, request: Request<LoginRequest>) -> Result<Response<LoginReply>, Status> {
        let request = request.into_inner();
        let millis = request.password.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(millis)).await;
        self.logins_finished.fetch_add(1, Ordering::SeqCst);
        assert_ne!(request.user, "panic", "a handler that panics");
        if request.user == "nobody" {
            return Err(Status::unauthenticated("no such user"));
        }
        Ok(Response::new(LoginReply {
            user: request.user,
            session_id: request.session_id,
            ..LoginReply::default()
        }))
    }

    async fn login_stream(
        &self,
        request: Request<Streaming<LoginCall>>,
    ) -> Result<Response<Self::LoginStreamStream>, Status> {
        let opened_before = self.streams_opened.fetch_add(1, Ordering::SeqCst);
        if self.stall_first_stream && opened_before == 0 {
            let (answers_tx, answers_rx) = tokio::sync::mpsc::channel(1);
            self.stalled.lock().expect("lock").push(answers_tx);
            return Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
                answers_rx,
            )));
        }
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

/// A server on a runtime of its own, so stopping it ends its connections too, as if its
/// process had died.
struct Server {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(auth: SleepyAuth, listener: std::net::TcpListener) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                listener.set_nonblocking(true).expect("nonblocking");
                let listener = TcpListener::from_std(listener).expect("listener");
                let serve = tonic::transport::Server::builder()
                    .add_service(AuthServer::new(auth))
                    .serve_with_incoming(TcpIncoming::from(listener));
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops every connection task with it.
        });
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("server thread");
        }
    }
}

fn bind() -> (std::net::TcpListener, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    (listener, address)
}

fn logins(address: SocketAddr, timeout: Duration) -> CallStream<LoginCall, LoginAnswer> {
    let channel: Channel = Endpoint::from_shared(format!("http://{address}"))
        .expect("url")
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();
    let client = AuthClient::new(channel);
    CallStream::new(timeout, move |calls| {
        let mut client = client.clone();
        Box::pin(async move { Ok(client.login_stream(calls).await?.into_inner()) })
    })
}

fn login(user: &str, sleep_ms: u64, session_id: &str) -> LoginRequest {
    LoginRequest {
        user: user.to_owned(),
        password: sleep_ms.to_string(),
        session_id: session_id.to_owned(),
        ..LoginRequest::default()
    }
}

#[tokio::test]
async fn answers_reach_their_callers_in_any_order() {
    let (listener, address) = bind();
    let auth = SleepyAuth::default();
    let server = Server::start(auth.clone(), listener);
    let stream = logins(address, Duration::from_secs(5));

    let slow = stream.call(login("slow", 300, "s-1"));
    let fast = async {
        // Sent after the slow call, answered before it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        let reply = stream.call(login("fast", 0, "s-2")).await;
        (reply, started.elapsed())
    };
    let refused = stream.call(login("nobody", 0, "s-3"));
    let (slow, (fast, fast_took), refused) = tokio::join!(slow, fast, refused);
    assert_eq!(slow.expect("slow").session_id, "s-1");
    assert_eq!(fast.expect("fast").session_id, "s-2");
    assert!(
        fast_took < Duration::from_millis(200),
        "the fast call did not wait behind the slow one ({fast_took:?})"
    );
    assert_eq!(refused.expect_err("refused").code(), Code::Unauthenticated);
    let many = concurrent_calls(&stream, 200).await;
    assert_eq!(many, 200, "every concurrent call answered");
    assert_eq!(
        auth.streams_opened.load(Ordering::SeqCst),
        1,
        "one stream for every call"
    );
    server.stop();
}

/// Makes `count` concurrent calls; returns how many were answered with their own session id.
async fn concurrent_calls(stream: &CallStream<LoginCall, LoginAnswer>, count: usize) -> usize {
    let calls = (0..count).map(|n| async move {
        let id = format!("many-{n}");
        stream
            .call(login("many", (n % 3) as u64, &id))
            .await
            .is_ok_and(|reply| reply.session_id == id)
    });
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .filter(|answered| *answered)
        .count()
}

#[tokio::test]
async fn a_restarted_server_is_found_again() {
    let (listener, address) = bind();
    let auth = SleepyAuth::default();
    let server = Server::start(auth.clone(), listener);
    let stream = logins(address, Duration::from_secs(2));
    assert!(stream.call(login("a", 0, "r-1")).await.is_ok());

    server.stop();
    let started = Instant::now();
    let down = stream.call(login("a", 0, "r-2")).await;
    assert_eq!(down.expect_err("server down").code(), Code::Unavailable);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a stopped server fails calls at once"
    );

    let listener = std::net::TcpListener::bind(address).expect("bind again");
    let server = Server::start(auth.clone(), listener);
    let mut reply = Err(Status::unavailable("not yet"));
    for _ in 0..50 {
        reply = stream.call(login("a", 0, "r-3")).await;
        if reply.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reply.expect("after restart").session_id, "r-3");
    assert_eq!(auth.streams_opened.load(Ordering::SeqCst), 2);
    server.stop();
}

#[tokio::test]
async fn a_timed_out_call_opens_a_new_stream_for_the_next() {
    let (listener, address) = bind();
    let auth = SleepyAuth {
        stall_first_stream: true,
        ..SleepyAuth::default()
    };
    let server = Server::start(auth.clone(), listener);
    let stream = logins(address, Duration::from_millis(300));

    let late = stream.call(login("late", 0, "t-1")).await;
    assert_eq!(late.expect_err("too slow").code(), Code::DeadlineExceeded);
    let next = stream.call(login("next", 0, "t-2")).await;
    assert_eq!(next.expect("next call").session_id, "t-2");
    assert_eq!(
        auth.streams_opened.load(Ordering::SeqCst),
        2,
        "the stream that let a call time out is replaced"
    );
    server.stop();
}

#[tokio::test]
async fn a_closing_server_answers_calls_in_flight_then_ends_the_stream() {
    let (listener, address) = bind();
    let auth = SleepyAuth::default();
    let server = Server::start(auth.clone(), listener);
    let stream = logins(address, Duration::from_secs(5));
    assert!(stream.call(login("a", 0, "c-1")).await.is_ok());

    let in_flight = stream.call(login("a", 300, "c-2"));
    let close = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        auth.closing.cancel();
    };
    let (in_flight, ()) = tokio::join!(in_flight, close);
    assert_eq!(
        in_flight.expect("answered before the end").session_id,
        "c-2"
    );
    // The stream has ended; a new one is refused at once by the closing server, not hung.
    let started = Instant::now();
    let after = stream.call(login("a", 0, "c-3")).await;
    assert_eq!(after.expect_err("closed").code(), Code::Unavailable);
    assert!(started.elapsed() < Duration::from_secs(1));
    server.stop();
}

#[tokio::test]
async fn the_server_drops_a_call_its_caller_gave_up_on() {
    let (listener, address) = bind();
    let auth = SleepyAuth::default();
    let server = Server::start(auth.clone(), listener);
    let stream = logins(address, Duration::from_millis(200));
    let late = stream.call(login("late", 1_000, "d-1")).await;
    assert_eq!(late.expect_err("too slow").code(), Code::DeadlineExceeded);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(
        auth.logins_finished.load(Ordering::SeqCst),
        0,
        "the server stopped the call at the caller's time limit"
    );
    server.stop();
}

#[tokio::test]
async fn a_panicking_handler_is_answered_and_the_stream_goes_on() {
    let (listener, address) = bind();
    let auth = SleepyAuth::default();
    let server = Server::start(auth.clone(), listener);
    let stream = logins(address, Duration::from_secs(5));
    let started = Instant::now();
    let failed = stream.call(login("panic", 0, "p-1")).await;
    assert_eq!(failed.expect_err("panicked").code(), Code::Internal);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered, not timed out"
    );
    let next = stream.call(login("a", 0, "p-2")).await;
    assert_eq!(next.expect("the stream still works").session_id, "p-2");
    assert_eq!(auth.streams_opened.load(Ordering::SeqCst), 1);
    server.stop();
}
