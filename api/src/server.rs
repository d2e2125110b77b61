//! Serving HTTP/1.1 connections: the accept loop, the cap on connections, the deadlines
//! every connection keeps, and the graceful stop.
//!
//! A client that opens connections and never finishes a request must not starve the
//! others. So every connection has a deadline whenever it is not being served: the head of
//! a request (request line and headers) must arrive within the header-read timeout,
//! counted from the connection's acceptance or, on a kept-alive connection, from the
//! request's first byte; a kept-alive connection may wait for its next request, or take
//! to read our answer, at most the idle timeout. At most `max_connections` are served at
//! once: the next one waits, with the ones behind it in the kernel's listen backlog, and
//! every open connection that is not in the middle of a request head is told to close
//! once its request in flight is answered (idle ones close at once), so clients that
//! merely keep connections open cannot hold the cap, and half-sent requests hold it for
//! at most the header-read timeout.
//!
//! Connection errors are the clients' doing (resets, half-sent requests, timeouts), so
//! they are logged at debug: a client must not be able to flood the log.
//!
//! Every request is served in the span of its trace, and answered with its
//! `traceparent` (see [`crate::trace`]).
//!
//! Only HTTP/1.1 is served: every client we support speaks it, and it keeps the
//! deadlines simple (HTTP/2 belongs in a proxy in front).

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use warp::{Filter, Reply};

use crate::trace;

/// The bounds every connection is served under.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    /// Longest wait for a request's head; see the module documentation.
    pub header_read_timeout: Duration,
    /// Longest a kept-alive connection waits for its next request or for the client to
    /// read an answer.
    pub idle_timeout: Duration,
    /// Most connections served at once (at least 1).
    pub max_connections: usize,
}

/// What the accept loop asks of every open connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// Carry on.
    Serve,
    /// The cap is reached: a connection not in the middle of a request head closes once
    /// its request in flight (if any) is answered; an idle one closes at once.
    MakeRoom,
    /// The server is stopping: every connection closes once its request in flight (if
    /// any) is answered.
    Stop,
}

/// How often connections are asked again to make room while a new one waits at the
/// cap: ones that finished a request since the last time can then go too.
const MAKE_ROOM_AGAIN: Duration = Duration::from_millis(200);

/// Serves `routes` on `listener` until `shutdown` is cancelled, then stops accepting, asks
/// every connection to close once its request in flight is answered, and returns when
/// all have closed.
pub(crate) async fn serve<F, R>(
    listener: TcpListener,
    routes: F,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) where
    F: Filter<Extract = (R,), Error = Infallible> + Clone + Send + Sync + 'static,
    R: Reply + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    let (signals, _) = watch::channel(Signal::Serve);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                pause_after_accept_error(&error).await;
                continue;
            }
        };
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                tracing::debug!(
                    max = limits.max_connections,
                    "connection cap reached: idle connections are asked to close"
                );
                let waited = loop {
                    signals.send_replace(Signal::MakeRoom);
                    tokio::select! {
                        permit = Arc::clone(&permits).acquire_owned() => {
                            break Some(permit.expect("the connection semaphore is never closed"));
                        }
                        () = tokio::time::sleep(MAKE_ROOM_AGAIN) => {}
                        () = shutdown.cancelled() => break None,
                    }
                };
                signals.send_replace(Signal::Serve);
                let Some(permit) = waited else { break };
                permit
            }
        };
        let connection =
            serve_connection(stream, routes.clone(), limits, permit, signals.subscribe());
        connections.spawn(async move { log_connection_end(connection.await) });
    }
    drop(listener);
    signals.send_replace(Signal::Stop);
    connections.close();
    connections.wait().await;
}

/// A failed `accept`. A connection reset or aborted before we took it is the client's
/// doing; anything else (out of file descriptors, say) is ours, logged, and waited out
/// for a moment instead of retried in a tight loop.
async fn pause_after_accept_error(error: &io::Error) {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    ) {
        tracing::debug!(%error, "a connection was gone before it was accepted");
        return;
    }
    tracing::error!(%error, "cannot accept connections; trying again in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Logs how a connection ended. Errors other than ours (a response hyper could not
/// write) are the client's or the network's: debug.
fn log_connection_end(ended: Result<(), hyper::Error>) {
    let Err(error) = ended else { return };
    // hyper's own message is only the kind ("connection error"); the cause says which.
    let mut described = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(inner) = cause {
        described = format!("{described}: {inner}");
        cause = inner.source();
    }
    if error.is_user() {
        tracing::warn!(error = %described, "a connection failed");
    } else {
        tracing::debug!(error = %described, "a connection ended with an error");
    }
}

/// One connection, served until it closes; holds its place under the cap (`permit`)
/// until then, and follows the accept loop's `signals`.
async fn serve_connection<F, R>(
    stream: TcpStream,
    routes: F,
    limits: ConnectionLimits,
    permit: OwnedSemaphorePermit,
    mut signals: watch::Receiver<Signal>,
) -> Result<(), hyper::Error>
where
    F: Filter<Extract = (R,), Error = Infallible> + Clone + Send + Sync + 'static,
    R: Reply + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Deadlined {
        stream,
        activity: Arc::clone(&activity),
        limits,
        timer: None,
        _permit: permit,
    });
    let routes = TowerToHyperService::new(warp::service(routes));
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            activity.start_serving();
            let trace = trace::of_request(request.headers());
            request.extensions_mut().insert(trace);
            let span = trace::request_span(&trace);
            let answer = routes.call(request).instrument(span);
            let activity = Arc::clone(&activity);
            async move {
                let mut response = answer.await;
                if let Ok(answered) = &mut response {
                    trace::answer_with(answered.headers_mut(), &trace);
                }
                activity.start_idling();
                // Hyper reads from the stream again only when woken, and the read it left
                // pending while we served has no deadline: wake the connection so that
                // read is made again, once the answer is written, and arms the idle one.
                std::future::poll_fn(|cx| {
                    cx.waker().wake_by_ref();
                    Poll::Ready(())
                })
                .await;
                response
            }
        })
    };
    let connection = http1::Builder::new()
        // Our own deadlines (in `Deadlined`) replace hyper's header-read timeout, which
        // would also end kept-alive connections after that much idle time.
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(connection);
    loop {
        tokio::select! {
            ended = connection.as_mut() => return ended,
            changed = signals.changed() => {
                let signal = match changed {
                    Ok(()) => *signals.borrow_and_update(),
                    Err(_) => Signal::Stop,
                };
                let close = match signal {
                    Signal::Serve => false,
                    // A connection in the middle of a request head is left alone: its
                    // client may have sent a whole request we have not read yet, and
                    // the header-read timeout bounds it anyway.
                    Signal::MakeRoom => !activity.is_reading_head(),
                    Signal::Stop => true,
                };
                if close {
                    // Closes at once when idle, else after answering the request in flight.
                    connection.as_mut().graceful_shutdown();
                    return connection.await;
                }
            }
        }
    }
}

/// What a connection is doing, and since when, as far as its deadlines care.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request's head: on a new connection since its acceptance, on a
    /// kept-alive one since the first byte of the request.
    ReadingHead(Instant),
    /// A request is being handled (its body read, its handler run).
    Serving,
    /// Answered; waiting for the next request (or for the client to read the answer).
    Idle(Instant),
}

/// The phase of one connection, shared by its reader and its service. Both run in the
/// connection's task, so the lock is never contended.
struct Activity(Mutex<Phase>);

impl Activity {
    fn new() -> Self {
        Self(Mutex::new(Phase::ReadingHead(Instant::now())))
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bytes_arrived(&self) {
        let mut phase = self.phase();
        if let Phase::Idle(_) = *phase {
            *phase = Phase::ReadingHead(Instant::now());
        }
    }

    fn start_serving(&self) {
        *self.phase() = Phase::Serving;
    }

    fn start_idling(&self) {
        *self.phase() = Phase::Idle(Instant::now());
    }

    fn is_reading_head(&self) -> bool {
        matches!(*self.phase(), Phase::ReadingHead(_))
    }

    /// When the connection must be closed unless its phase changes, and why.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<(Instant, &'static str)> {
        match *self.phase() {
            Phase::ReadingHead(since) => Some((
                since + limits.header_read_timeout,
                "the request head did not arrive within the header-read timeout",
            )),
            Phase::Serving => None,
            Phase::Idle(since) => Some((
                since + limits.idle_timeout,
                "the connection was idle longer than the idle timeout",
            )),
        }
    }
}

/// A client's stream that fails with [`io::ErrorKind::TimedOut`] once a read or write
/// has waited past the connection's deadline, which ends the connection. The timer is
/// only polled while hyper waits on the stream, so a connection being served pays nothing.
struct Deadlined {
    stream: TcpStream,
    activity: Arc<Activity>,
    limits: ConnectionLimits,
    timer: Option<Pin<Box<Sleep>>>,
    _permit: OwnedSemaphorePermit,
}

impl Deadlined {
    /// `Pending`, or the timeout error once the deadline has passed.
    fn poll_deadline<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let Some((deadline, reason)) = self.activity.deadline(&self.limits) else {
            return Poll::Pending;
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, reason))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Deadlined {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.activity.bytes_arrived();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => this.poll_deadline(cx),
        }
    }
}

impl AsyncWrite for Deadlined {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Pending => this.poll_deadline(cx),
            ready => ready,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.poll_deadline(cx),
            ready => ready,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_flush(cx) {
            Poll::Pending => this.poll_deadline(cx),
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
