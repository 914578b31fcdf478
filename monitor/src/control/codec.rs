//! Framing on the control socket: a 4-byte big-endian length, then that many bytes of JSON.
//! Frames are bounded so a confused or hostile peer cannot make the daemon buffer without end.

use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// Largest frame either side accepts. A `top --limit 1000` reply is about 150 KiB.
pub const MAX_FRAME: usize = 1 << 20;

pub type Framed_ = Framed<UnixStream, LengthDelimitedCodec>;

pub fn framed(stream: UnixStream) -> Framed_ {
    Framed::new(
        stream,
        LengthDelimitedCodec::builder()
            .max_frame_length(MAX_FRAME)
            .new_codec(),
    )
}
