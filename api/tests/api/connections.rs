//! Connections: clients that open connections and never finish a request (or keep them
//! idle) cannot hold the API's connections, and what they do is not logged as an error.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use verify_common::config::{ApiSettings, FromFlags, LogFormat};
use verify_common::telemetry::log_subscriber;

use crate::helpers::{API_KEY, TestApp, TestOptions, spawn_app_with};

/// The start of a request whose head never ends.
const HALF_SENT: &[u8] = b"GET /readyz HTTP/1.1\r\nHost: x\r\n";

/// An API with these connection flags.
async fn app_with(flags: &[&str]) -> TestApp {
    let mut all = vec!["--addr", "127.0.0.1:0", "--api-key", API_KEY];
    all.extend_from_slice(flags);
    spawn_app_with(TestOptions {
        api: ApiSettings::from_flags(&all).expect("the connection flags parse"),
        ..TestOptions::default()
    })
    .await
}

fn host(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_owned()
}

/// A connection that sent [`HALF_SENT`], and when it began connecting.
async fn half_sent(app: &TestApp) -> (TcpStream, Instant) {
    let began = Instant::now();
    let mut stream = TcpStream::connect(host(app)).await.unwrap();
    stream.write_all(HALF_SENT).await.unwrap();
    (stream, began)
}

/// When the server closed `stream` (end of file or reset); `None` if it was still open
/// at `deadline`.
async fn closed_by(stream: &mut TcpStream, deadline: Instant) -> Option<Instant> {
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(Instant::now()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Sends a whole `GET /healthz` on `stream` and reads its answer, leaving the
/// connection kept alive.
async fn complete_request(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    while !answer.ends_with(br#"{"status":"ok"}"#) {
        let read = stream.read(&mut buffer).await.unwrap();
        assert!(read > 0, "closed before answering: {answer:?}");
        answer.extend_from_slice(&buffer[..read]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200 OK"), "{answer:?}");
}

/// `GET /readyz` on a connection of its own; its status and how long it took.
async fn readyz(app: &TestApp, limit: Duration) -> (StatusCode, Duration) {
    let began = Instant::now();
    let response = reqwest::Client::builder()
        .timeout(limit)
        .build()
        .unwrap()
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("/readyz did not answer within {limit:?}: {e}"));
    (response.status(), began.elapsed())
}

/// Every log line written on this thread while the guard lives (the test's runtime runs
/// the whole app on it), as JSON lines, at `debug`.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn start() -> (Self, tracing::dispatcher::DefaultGuard) {
        let captured = Self::default();
        let sink = captured.clone();
        let subscriber = log_subscriber(LogFormat::Json, "debug", false, move || sink.clone());
        let guard = tracing::subscriber::set_default(subscriber);
        (captured, guard)
    }

    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn readyz_answers_while_more_half_sent_requests_than_the_cap_are_open() {
    let app = app_with(&["--max-connections", "8", "--header-read-timeout-ms", "1000"]).await;
    let mut stalled = Vec::new();
    for _ in 0..12 {
        stalled.push(half_sent(&app).await);
    }

    let (status, took) = readyz(&app, Duration::from_secs(10)).await;

    assert_eq!(status, StatusCode::OK);
    assert!(
        took < Duration::from_millis(2_500),
        "/readyz took {took:?} behind half-sent requests with a 1 s header-read timeout"
    );
}

#[tokio::test]
async fn half_sent_requests_are_closed_after_the_header_read_timeout_and_not_logged_as_errors() {
    let (logs, _guard) = Captured::start();
    let timeout = Duration::from_millis(1_000);
    let app = app_with(&["--max-connections", "8", "--header-read-timeout-ms", "1000"]).await;
    let mut stalled = Vec::new();
    for _ in 0..12 {
        stalled.push(half_sent(&app).await);
    }
    // Two more that the client gives up on itself.
    for _ in 0..2 {
        drop(half_sent(&app).await);
    }

    let deadline = Instant::now() + 3 * timeout + Duration::from_secs(2);
    let mut problems = Vec::new();
    for (n, (stream, began)) in stalled.iter_mut().enumerate() {
        match closed_by(stream, deadline).await {
            None => problems.push(format!("connection {n} is still open")),
            Some(at) if at - *began < timeout => problems.push(format!(
                "connection {n} was closed after {:?}, before the timeout",
                at - *began
            )),
            Some(_) => {}
        }
    }

    assert!(problems.is_empty(), "{problems:#?}");
    let ended = |lines: &[String]| {
        lines
            .iter()
            .filter(|line| line.contains("a connection ended with an error"))
            .count()
    };
    let logged_by = Instant::now() + Duration::from_secs(5);
    while ended(&logs.lines()) < 14 && Instant::now() < logged_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = logs.lines();
    assert!(ended(&lines) >= 14, "{lines:#?}");
    let errors: Vec<&String> = lines
        .iter()
        .filter(|line| line.contains(r#""level":"ERROR""#))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

#[tokio::test]
async fn a_kept_alive_connection_is_closed_after_the_idle_timeout_not_the_header_timeout() {
    let app = app_with(&[
        "--header-read-timeout-ms",
        "300",
        "--idle-timeout-secs",
        "1",
    ])
    .await;
    let mut stream = TcpStream::connect(host(&app)).await.unwrap();
    let sent = Instant::now();
    complete_request(&mut stream).await;
    let answered = Instant::now();

    let closed = closed_by(&mut stream, answered + Duration::from_secs(4)).await;

    let closed = closed.expect("the idle connection is still open after 4 s");
    assert!(
        closed - sent >= Duration::from_secs(1),
        "closed {:?} after the request, before the idle timeout",
        closed - sent
    );
}

#[tokio::test]
async fn idle_kept_alive_connections_make_room_when_the_cap_is_reached() {
    let app = app_with(&["--max-connections", "4"]).await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(host(&app)).await.unwrap();
        complete_request(&mut stream).await;
        idle.push(stream);
    }

    let (status, took) = readyz(&app, Duration::from_secs(10)).await;

    assert_eq!(status, StatusCode::OK);
    assert!(
        took < Duration::from_secs(2),
        "/readyz waited {took:?} for idle connections (idle timeout 60 s)"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    for (n, stream) in idle.iter_mut().enumerate() {
        assert!(
            closed_by(stream, deadline).await.is_some(),
            "idle connection {n} is still open"
        );
    }
}

#[tokio::test]
async fn a_request_in_flight_when_the_api_stops_is_still_answered() {
    let app = app_with(&[]).await;
    let body = r#"{"text": "Your code is {{code}}"}"#;
    let (first, rest) = body.split_at(10);
    let mut stream = TcpStream::connect(host(&app)).await.unwrap();
    let head = format!(
        "POST /v1/templates/preview HTTP/1.1\r\nHost: x\r\nX-Api-Key: {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{first}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // Another request's round trip lets the server read the first one's head.
    let (status, _) = readyz(&app, Duration::from_secs(5)).await;
    assert_eq!(status, StatusCode::OK);

    app.stop();
    stream.write_all(rest.as_bytes()).await.unwrap();

    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the connection was closed after the answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 200 ok"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(answer.contains("your code is"), "{answer}");
}

#[tokio::test]
async fn a_body_that_stalls_after_its_head_is_answered_408_and_the_connection_closed() {
    let app = app_with(&[]).await;
    let mut stream = TcpStream::connect(host(&app)).await.unwrap();
    let head = format!(
        "POST /v1/verifications HTTP/1.1\r\nHost: x\r\nX-Api-Key: {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"to\": \"+1"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let sent = Instant::now();

    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    let closed = loop {
        match tokio::time::timeout_at(sent + Duration::from_secs(20), stream.read(&mut buffer))
            .await
        {
            Err(_) => break false,
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(read)) => answer.extend_from_slice(&buffer[..read]),
        }
    };

    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a stalled body was answered {answer:?}"
    );
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");
    assert!(closed, "the connection stayed open after the 408");
    let count: i64 = app.sql("SELECT count(*) FROM verifications").await[0].get(0);
    assert_eq!(
        count, 0,
        "a request whose body never arrived recorded something"
    );
}
