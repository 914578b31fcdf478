//! The control socket's server: one task per connection, frames in, replies out.
//!
//! Under abuse (the socket is root-only, so the abuser is a confused local tool more often than
//! an attacker) it stays available to `monitor status`:
//! - at most `max_connections` are open at once; a new connection beyond that closes the
//!   connection that has been idle longest, so idle connections can never lock out a command,
//!   and when every open connection is busy the newcomer gets a one-line "busy" error;
//! - a connection idle for `idle_timeout`, or whose reply cannot be written within it, is
//!   closed;
//! - a frame that is too large or not a request gets one error reply and closes that
//!   connection only; a reply too large for a frame is replaced by a one-line error;
//! - on shutdown the server stops accepting, lets every request in progress finish and reply,
//!   closes idle connections, and returns when all are gone.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use log::{debug, warn};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{UnixListener, UnixStream},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use super::{Maps, handle};
use crate::{
    daemon::Shared,
    proto::{Response, codec},
};

/// Limits on the control connections.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

impl Default for Limits {
    /// 64 connections is far more than operators and scripts use at once, and 64 descriptors
    /// are nothing against the daemon's open-file limit. A CLI sends its request as soon as it
    /// connects, so 10 s of silence means a stuck or hostile peer.
    fn default() -> Self {
        Self {
            max_connections: 64,
            idle_timeout: Duration::from_secs(10),
        }
    }
}

struct Slot {
    /// True while the connection waits for a request (it may then be closed for a newcomer).
    idle: Arc<AtomicBool>,
    close: CancellationToken,
}

/// The open connections by age (ids grow).
#[derive(Default)]
struct Slots {
    next: u64,
    open: BTreeMap<u64, Slot>,
}

/// Removes its connection's slot when the connection task ends, however it ends.
struct SlotGuard {
    slots: Arc<Mutex<Slots>>,
    id: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        lock(&self.slots).open.remove(&self.id);
    }
}

fn lock(m: &Mutex<Slots>) -> std::sync::MutexGuard<'_, Slots> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves until `shutdown` is cancelled, then waits for the open connections to finish.
pub async fn serve<M: Maps>(
    listener: UnixListener,
    shared: Arc<Shared<M>>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Mutex::new(Slots::default()));
    let mut tasks = JoinSet::new();
    let mut last_accept_error: Option<tokio::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        while tasks.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: say so once a minute, not every 100 ms.
                if last_accept_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    warn!("control socket accept failed: {e}");
                    last_accept_error = Some(tokio::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (id, idle, close) = {
            let mut s = lock(&slots);
            if s.open.len() >= limits.max_connections {
                let oldest_idle = s
                    .open
                    .iter()
                    .find(|(_, slot)| slot.idle.load(Ordering::Acquire))
                    .map(|(id, _)| *id);
                match oldest_idle {
                    Some(old) => {
                        if let Some(slot) = s.open.remove(&old) {
                            debug!("control: closing the longest-idle connection for a new one");
                            slot.close.cancel();
                        }
                    }
                    None => {
                        drop(s);
                        shared.metrics.control_errors.inc();
                        refuse_busy(&stream, limits.max_connections);
                        continue;
                    }
                }
            }
            let id = s.next;
            s.next += 1;
            let idle = Arc::new(AtomicBool::new(true));
            let close = shutdown.child_token();
            s.open.insert(
                id,
                Slot {
                    idle: idle.clone(),
                    close: close.clone(),
                },
            );
            (id, idle, close)
        };
        let guard = SlotGuard {
            slots: slots.clone(),
            id,
        };
        let shared = shared.clone();
        tasks.spawn(async move {
            let _guard = guard;
            connection(stream, &shared, limits.idle_timeout, &idle, &close).await;
        });
    }
    // Stop accepting at once, then let the connections finish what they are doing.
    drop(listener);
    while tasks.join_next().await.is_some() {}
}

/// Tells a newcomer that every connection is busy, without waiting on it: the reply is tiny
/// and the socket buffer empty, so one non-blocking write either goes through or the peer
/// was not going to read it anyway.
fn refuse_busy(stream: &UnixStream, max: usize) {
    let body = encode(&Response::Error(format!(
        "the daemon is busy: all {max} control connections are running commands; try again in a moment"
    )));
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    let _ = stream.try_write(&frame);
}

fn encode(response: &Response) -> Vec<u8> {
    serde_json::to_vec(response).unwrap_or_else(|e| {
        serde_json::to_vec(&Response::Error(format!("encoding the reply: {e}"))).unwrap_or_default()
    })
}

/// The reply's bytes, or a one-line error in their place when they would not fit in a frame.
fn bounded<M: Maps>(shared: &Shared<M>, response: &Response) -> Vec<u8> {
    let bytes = encode(response);
    if bytes.len() <= codec::MAX_FRAME {
        return bytes;
    }
    shared.metrics.control_errors.inc();
    warn!(
        "control: a reply of {} bytes exceeded the {}-byte frame limit",
        bytes.len(),
        codec::MAX_FRAME
    );
    encode(&Response::Error(format!(
        "the reply ({} bytes) is larger than the control socket's {}-byte frame limit; ask for less (a smaller --limit, or a shorter --since)",
        bytes.len(),
        codec::MAX_FRAME
    )))
}

/// Sends one reply; false when the peer is gone or does not read it within `timeout`.
async fn reply<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut codec::Framed_<S>,
    bytes: Vec<u8>,
    timeout: Duration,
) -> bool {
    matches!(
        tokio::time::timeout(timeout, framed.send(Bytes::from(bytes))).await,
        Ok(Ok(()))
    )
}

async fn connection<M: Maps, S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    shared: &Shared<M>,
    idle_timeout: Duration,
    idle: &AtomicBool,
    close: &CancellationToken,
) {
    let mut framed = codec::framed(stream);
    loop {
        idle.store(true, Ordering::Release);
        let next = tokio::select! {
            biased;
            _ = close.cancelled() => return,
            next = tokio::time::timeout(idle_timeout, framed.next()) => next,
        };
        idle.store(false, Ordering::Release);
        let frame = match next {
            Err(_) => {
                debug!("control connection closed after {idle_timeout:?} idle");
                return;
            }
            Ok(None) => return,
            Ok(Some(Err(e))) => {
                debug!("control connection closed on a bad frame: {e}");
                shared.metrics.control_errors.inc();
                let msg = format!(
                    "bad frame ({e}); frames are a 4-byte big-endian length and at most {} bytes of JSON",
                    codec::MAX_FRAME
                );
                reply(&mut framed, encode(&Response::Error(msg)), idle_timeout).await;
                return;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let request = match serde_json::from_slice(&frame) {
            Ok(request) => request,
            Err(e) => {
                debug!("control connection closed on a malformed request: {e}");
                shared.metrics.control_errors.inc();
                let msg = Response::Error(format!("malformed request: {e}"));
                reply(&mut framed, encode(&msg), idle_timeout).await;
                return;
            }
        };
        // A request in progress runs to its end and gets its reply, shutdown or not.
        let response = handle(shared, request).await;
        if !reply(&mut framed, bounded(shared, &response), idle_timeout).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::{
        daemon::control::fake,
        proto::{Request, client},
    };

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "monitor-ctl-{name}-{}-{}",
                std::process::id(),
                rand::random::<u32>()
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            Self(dir)
        }
        fn socket(&self) -> PathBuf {
            self.0.join("s.sock")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    struct Running {
        shared: Arc<Shared<fake::FakeMaps>>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    fn start(socket: &Path, limits: Limits) -> Running {
        let listener = UnixListener::bind(socket).expect("bind");
        let shared = Arc::new(fake::shared(|_| {}));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(listener, shared.clone(), limits, shutdown.clone()));
        Running {
            shared,
            shutdown,
            task,
        }
    }

    async fn raw_request(stream: &mut UnixStream, body: &[u8]) {
        stream
            .write_all(&(body.len() as u32).to_be_bytes())
            .await
            .unwrap();
        stream.write_all(body).await.unwrap();
    }

    /// Reads one reply frame, or None when the daemon closed the connection.
    async fn raw_reply(stream: &mut UnixStream) -> Option<Response> {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await.ok()?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut body).await.ok()?;
        Some(serde_json::from_slice(&body).expect("a reply"))
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed_after_the_timeout() {
        let dir = TempDir::new("idle");
        let limits = Limits {
            max_connections: 4,
            idle_timeout: Duration::from_secs(10),
        };
        let server = start(&dir.socket(), limits);
        let mut idle = UnixStream::connect(dir.socket()).await.unwrap();
        let started = tokio::time::Instant::now();
        let mut buf = [0u8; 1];
        let n = idle.read(&mut buf).await.unwrap();
        assert_eq!(n, 0, "the daemon closes an idle connection");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
            "closed after {waited:?}"
        );
        // A connection that talks is served.
        let value = client::call(&dir.socket(), &Request::Stats).await.unwrap();
        assert!(value.get("seen").is_some(), "{value}");
        server.shutdown.cancel();
        server.task.await.unwrap();
    }

    /// Lets the other tasks and the IO driver run. (No sleeping here: while a blocking task
    /// waits on a lock the test holds, paused time does not advance.)
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    /// An `offenders` request reads the history on a blocking thread; holding the history's
    /// lock keeps such a request in progress for as long as a test needs.
    const SLOW_REQUEST: &[u8] = br#"{"command":"offenders","since":null,"limit":5}"#;

    #[tokio::test(start_paused = true)]
    #[expect(
        clippy::await_holding_lock,
        reason = "the held history lock is what keeps a request in progress"
    )]
    async fn shutdown_finishes_the_request_in_progress_and_closes_idle_connections() {
        let dir = TempDir::new("shutdown");
        let server = start(&dir.socket(), Limits::default());
        let mut idle = UnixStream::connect(dir.socket()).await.unwrap();
        let mut busy = UnixStream::connect(dir.socket()).await.unwrap();
        let history = server.shared.history.clone();
        let held = history.lock().unwrap();
        raw_request(&mut busy, SLOW_REQUEST).await;
        settle().await;
        server.shutdown.cancel();
        settle().await;
        assert!(!server.task.is_finished(), "a request is still in progress");
        let mut buf = [0u8; 1];
        assert_eq!(idle.read(&mut buf).await.unwrap(), 0, "idle one closed");
        assert!(
            UnixStream::connect(dir.socket()).await.is_err(),
            "no new connections after shutdown"
        );
        drop(held);
        let reply = raw_reply(&mut busy)
            .await
            .expect("the busy one gets its reply");
        assert!(
            matches!(&reply, Response::Ok(v) if v.is_array()),
            "{reply:?}"
        );
        assert!(raw_reply(&mut busy).await.is_none(), "then it is closed");
        server.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    #[expect(
        clippy::await_holding_lock,
        reason = "the held history lock is what keeps a request in progress"
    )]
    async fn a_full_house_of_idle_connections_gives_way_and_busy_ones_refuse_clearly() {
        let dir = TempDir::new("cap");
        let limits = Limits {
            max_connections: 3,
            idle_timeout: Duration::from_secs(3600),
        };
        let server = start(&dir.socket(), limits);
        let mut idle = Vec::new();
        for _ in 0..3 {
            idle.push(UnixStream::connect(dir.socket()).await.unwrap());
        }
        settle().await;
        let value = client::call(&dir.socket(), &Request::Stats).await.unwrap();
        assert!(value.get("seen").is_some());
        let mut buf = [0u8; 1];
        assert_eq!(
            idle[0].read(&mut buf).await.unwrap(),
            0,
            "the oldest gave way"
        );
        // Now make three connections busy.
        let history = server.shared.history.clone();
        let held = history.lock().unwrap();
        let mut busy = Vec::new();
        for _ in 0..3 {
            let mut s = UnixStream::connect(dir.socket()).await.unwrap();
            raw_request(&mut s, SLOW_REQUEST).await;
            settle().await;
            busy.push(s);
        }
        let mut newcomer = UnixStream::connect(dir.socket()).await.unwrap();
        match raw_reply(&mut newcomer).await {
            Some(Response::Error(e)) => {
                assert!(e.contains("busy") && e.contains("try again"), "{e}")
            }
            other => panic!("expected a busy error, got {other:?}"),
        }
        drop(held);
        for s in &mut busy {
            assert!(matches!(raw_reply(s).await, Some(Response::Ok(_))));
        }
        server.shutdown.cancel();
        server.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_too_large_for_a_frame_becomes_a_one_line_error_and_is_counted() {
        let shared = fake::shared(|_| {});
        let huge = Response::Ok(serde_json::Value::String("x".repeat(codec::MAX_FRAME)));
        let bytes = bounded(&shared, &huge);
        let reply: Response = serde_json::from_slice(&bytes).unwrap();
        match reply {
            Response::Error(e) => {
                assert!(e.contains("frame limit") && e.contains("--limit"), "{e}");
                assert!(!e.contains('\n'));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(shared.metrics.control_errors.get(), 1);
        let small = Response::Ok(serde_json::json!({"a": 1}));
        assert_eq!(bounded(&shared, &small), encode(&small));
        assert_eq!(shared.metrics.control_errors.get(), 1);
    }

    /// The issue's case, on real sockets and real time: a thousand idle connections, then
    /// `status` must still answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_answers_with_a_thousand_idle_connections_open() {
        crate::daemon::preflight::raise_open_file_limit();
        let dir = TempDir::new("thousand");
        let server = start(&dir.socket(), Limits::default());
        let mut idle = Vec::with_capacity(1000);
        for i in 0..1000 {
            match UnixStream::connect(dir.socket()).await {
                Ok(s) => idle.push(s),
                Err(e) => panic!("connection {i} failed: {e}"),
            }
        }
        let value = tokio::time::timeout(
            Duration::from_secs(20),
            client::call(&dir.socket(), &Request::Status),
        )
        .await
        .expect("status answered in time")
        .expect("status answered");
        assert_eq!(value["version"], env!("CARGO_PKG_VERSION"));
        // The daemon held no more than its cap: the oldest idle connections were closed.
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), idle[0].read(&mut buf))
            .await
            .expect("the oldest idle connection was closed, not left open");
        assert_eq!(closed.unwrap(), 0);
        server.shutdown.cancel();
        server.task.await.unwrap();
    }
}
