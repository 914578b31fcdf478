//! The CLI's side of the control socket: one request, one reply, with errors an operator can
//! act on (daemon not running, permission denied).

use std::{io, path::Path, time::Duration};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::UnixStream;

use super::{Request, Response, codec};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "the monitor daemon is not running (no control socket at {0}); start it with `monitor run --iface IFACE --port PORT` or `systemctl start monitor`, or point --socket / MONITOR_SOCKET at its socket"
    )]
    NotRunning(String),
    #[error(
        "permission denied on the control socket {0}: it is only for root (mode 0600); run the command with sudo"
    )]
    PermissionDenied(String),
    #[error("control socket {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("the daemon closed the connection without replying")]
    Closed,
    #[error("the daemon did not reply within {0:?}")]
    Timeout(Duration),
    #[error("unreadable reply from the daemon: {0}")]
    Protocol(String),
    #[error("{0}")]
    Daemon(String),
}

/// How long a command may take; `top` over a million sources answers from a prepared sample,
/// so anything near this means the daemon is stuck.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Sends one request and returns the reply's data (or the daemon's one-line error).
pub async fn call(socket: &Path, request: &Request) -> Result<serde_json::Value, ClientError> {
    let path = socket.display().to_string();
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning(path.clone())
            }
            io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(path.clone()),
            _ => ClientError::Io {
                path: path.clone(),
                source: e,
            },
        })?;
    let mut framed = codec::framed(stream);
    let payload = serde_json::to_vec(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
    let exchange = async {
        framed
            .send(Bytes::from(payload))
            .await
            .map_err(|source| ClientError::Io {
                path: path.clone(),
                source,
            })?;
        match framed.next().await {
            None => Err(ClientError::Closed),
            Some(Err(source)) => Err(ClientError::Io {
                path: path.clone(),
                source,
            }),
            Some(Ok(frame)) => serde_json::from_slice::<Response>(&frame)
                .map_err(|e| ClientError::Protocol(e.to_string())),
        }
    };
    match tokio::time::timeout(TIMEOUT, exchange).await {
        Err(_) => Err(ClientError::Timeout(TIMEOUT)),
        Ok(Err(e)) => Err(e),
        Ok(Ok(Response::Ok(value))) => Ok(value),
        Ok(Ok(Response::Error(msg))) => Err(ClientError::Daemon(msg)),
    }
}
