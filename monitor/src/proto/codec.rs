//! Framing on the control socket: a 4-byte big-endian length, then that many bytes of JSON.
//! Frames are bounded so a confused or hostile peer cannot make the daemon buffer without end.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// Largest frame either side accepts. A `top --limit 1000` reply is about 150 KiB.
pub const MAX_FRAME: usize = 1 << 20;

pub type Framed_<S> = Framed<S, LengthDelimitedCodec>;

pub fn framed<S: AsyncRead + AsyncWrite>(stream: S) -> Framed_<S> {
    Framed::new(
        stream,
        LengthDelimitedCodec::builder()
            .max_frame_length(MAX_FRAME)
            .new_codec(),
    )
}
