//! The daemon's side of the control socket: one task per connection, frames in, replies out.
//! A frame that is too large or not a request gets one error reply and closes that connection
//! only.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use log::{debug, warn};
use tokio::net::{UnixListener, UnixStream};

use super::{Response, codec, handlers};
use crate::daemon::Shared;

pub async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, shared.clone()));
            }
            Err(e) => {
                warn!("control socket accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn reply(framed: &mut codec::Framed_, response: &Response) -> bool {
    let bytes = match serde_json::to_vec(response) {
        Ok(b) => b,
        Err(e) => serde_json::to_vec(&Response::Error(format!("encoding the reply: {e}")))
            .unwrap_or_default(),
    };
    framed.send(Bytes::from(bytes)).await.is_ok()
}

async fn connection(stream: UnixStream, shared: Arc<Shared>) {
    let mut framed = codec::framed(stream);
    while let Some(frame) = framed.next().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                debug!("control connection closed on a bad frame: {e}");
                shared.metrics.control_errors.inc();
                let msg = format!(
                    "bad frame ({e}); frames are a 4-byte big-endian length and at most {} bytes of JSON",
                    codec::MAX_FRAME
                );
                reply(&mut framed, &Response::Error(msg)).await;
                return;
            }
        };
        let request = match serde_json::from_slice(&frame) {
            Ok(request) => request,
            Err(e) => {
                debug!("control connection closed on a malformed request: {e}");
                shared.metrics.control_errors.inc();
                reply(
                    &mut framed,
                    &Response::Error(format!("malformed request: {e}")),
                )
                .await;
                return;
            }
        };
        let response = handlers::handle(&shared, request).await;
        if !reply(&mut framed, &response).await {
            return;
        }
    }
}
