//! The local control socket: `nasgw status`, `nasgw ip` and friends talk to the running daemon
//! through a Unix socket named by `[node] control_socket`. One JSON request line in, one JSON
//! response line out, so several daemons on one machine (tests) never mix up.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

/// A request to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Cluster and node states (`nasgw status`).
    Status,
    /// Public addresses and their owners (`nasgw ip`).
    Ip,
    /// Take this node out of service: it releases its public addresses (`nasgw disable`).
    Disable,
    /// Put this node back in service (`nasgw enable`).
    Enable,
    /// This node's client connections (`nasgw connections`).
    Connections,
    /// Move a public address to a node (`nasgw ip move ADDR NODE`).
    IpMove {
        /// The public address.
        address: std::net::IpAddr,
        /// The node number (pnn) that should hold it.
        node: u32,
    },
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    /// For [`Request::Status`].
    Status(ha::status::ClusterStatus),
    /// For [`Request::Ip`].
    Ip(ha::status::IpReport),
    /// For [`Request::Connections`].
    Connections {
        /// When the node answered (seconds since the Unix epoch).
        now: u64,
        /// Every client connection of the node.
        connections: Vec<crate::clients::ClientConnection>,
    },
    /// An admin request was accepted.
    Done {
        /// What happens next, for the admin.
        message: String,
    },
    /// The request could not be served.
    Error {
        /// Why.
        message: String,
    },
}

impl Request {
    /// Whether the request changes the node or the cluster (and so needs root), as opposed to
    /// reading its state.
    pub fn changes_state(&self) -> bool {
        match self {
            Request::Status | Request::Ip | Request::Connections => false,
            Request::Disable | Request::Enable | Request::IpMove { .. } => true,
        }
    }
}

/// Whether a peer with `uid` (from SO_PEERCRED; `None` when unknown) may send changing
/// requests: root, or the daemon's own user.
pub fn may_change(uid: Option<u32>) -> bool {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    matches!(uid, Some(u) if u == 0 || u == me)
}

/// Answers requests; implemented by the daemon.
pub trait Handler: Send + Sync + 'static {
    /// Serves one request.
    fn handle(&self, req: Request) -> Response;

    /// Whether the node's own loops still run (the service watchdog asks); `Err` says which
    /// one stalled.
    fn alive(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Longest request line accepted (a request is a few dozen bytes).
const MAX_REQUEST: u64 = 64 * 1024;

/// Serves the control socket until `stop` fires.
pub async fn serve(listener: UnixListener, handler: std::sync::Arc<dyn Handler>, stop: CancellationToken) {
    loop {
        let conn = tokio::select! {
            _ = stop.cancelled() => return,
            c = listener.accept() => c,
        };
        let (stream, _) = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                crate::listener::pause_if_out_of_resources(&e).await;
                continue;
            }
        };
        let handler = handler.clone();
        let peer = stream.peer_cred().ok().map(|c| c.uid());
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let mut line = String::new();
            let mut rd = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(rd, MAX_REQUEST));
            if rd.read_line(&mut line).await.is_err() {
                return;
            }
            let resp = match serde_json::from_str::<Request>(&line) {
                Ok(req) if req.changes_state() && !may_change(peer) => {
                    tracing::warn!(uid = ?peer, request = ?req, "control request refused: only root may change the node");
                    Response::Error { message: "permission denied: only root may change the node".into() }
                }
                // The same on every node, cluster or not: answered from the client registry.
                Ok(Request::Connections) => Response::Connections {
                    now: crate::daemon::unix_secs(std::time::SystemTime::now()),
                    connections: crate::clients::CLIENTS.snapshot(),
                },
                Ok(req) => handler.handle(req),
                Err(e) => Response::Error { message: format!("bad control request: {e}") },
            };
            let mut out = serde_json::to_vec(&resp).expect("response serialises");
            out.push(b'\n');
            let _ = wr.write_all(&out).await;
        });
    }
}

/// Why a control request failed, worded for the admin.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listens at the socket.
    #[error("nasgw is not running (no daemon answers on {path}): {source}")]
    NotRunning {
        /// The socket path tried.
        path: String,
        /// The connect error.
        source: std::io::Error,
    },
    /// The exchange broke half way.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The daemon answered something unreadable.
    #[error("control socket {path}: unreadable answer: {detail}")]
    Protocol {
        /// The socket path.
        path: String,
        /// What went wrong.
        detail: String,
    },
}

/// Sends one request to the daemon listening on `socket` (blocking; for the CLI).
pub fn request(socket: &Path, req: &Request) -> Result<Response, ClientError> {
    let path = socket.display().to_string();
    let stream =
        UnixStream::connect(socket).map_err(|source| ClientError::NotRunning { path: path.clone(), source })?;
    let io = |source| ClientError::Io { path: path.clone(), source };
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(io)?;
    let mut line = serde_json::to_vec(req).expect("request serialises");
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|e| ClientError::Protocol { path: path.clone(), detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    /// Counts the requests that reach it.
    struct Counting(AtomicUsize);

    impl Handler for Counting {
        fn handle(&self, _req: Request) -> Response {
            self.0.fetch_add(1, Ordering::SeqCst);
            Response::Done { message: "done".into() }
        }
    }

    /// Sends `req` from a thread running as `uid` (credentials are per thread for the raw
    /// syscall, so the test process itself stays root).
    fn ask_as(socket: &Path, uid: u32, req: Request) -> Response {
        let socket = socket.to_path_buf();
        std::thread::spawn(move || {
            // SAFETY: changes only this thread's credentials (raw syscall, not glibc's
            // process-wide setresuid).
            let rc = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
            assert_eq!(rc, 0, "setresuid needs root to run this test");
            request(&socket, &req).expect("answered")
        })
        .join()
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_root_may_change_the_node_through_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let listener = UnixListener::bind(&path).unwrap();
        // The socket is reachable by anyone in this test, as under umask 000 before the fix.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let handler = Arc::new(Counting(AtomicUsize::new(0)));
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, handler.clone(), stop.clone()));
        let p = path.clone();
        let (nobody_disable, nobody_status, root_disable) = tokio::task::spawn_blocking(move || {
            (ask_as(&p, 65534, Request::Disable), ask_as(&p, 65534, Request::Status), ask_as(&p, 0, Request::Disable))
        })
        .await
        .unwrap();
        assert!(
            matches!(&nobody_disable, Response::Error { message } if message.contains("permission denied")),
            "{nobody_disable:?}"
        );
        assert!(matches!(nobody_status, Response::Done { .. }), "reading state needs no privilege");
        assert!(matches!(root_disable, Response::Done { .. }));
        assert_eq!(handler.0.load(Ordering::SeqCst), 2, "the refused request never reached the daemon");
        stop.cancel();
    }
}
