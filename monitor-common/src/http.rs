//! The `http` counting mode's request-line matcher, shared by the kernel and user space.
//!
//! A TCP segment counts as one request when its payload *begins* an HTTP/1.x request line:
//! a method token, one space, and an origin-form target starting with `/`; and, when a path
//! prefix is configured, the target starts with that prefix. The kernel copies at most
//! `HTTP_INSPECT_MAX` bytes from the start of the payload, so the version token at the end of
//! the line is not checked (a long query string would put it out of reach).
//!
//! Consequences, all deliberate:
//! - pipelined requests in one segment count once (only the start of a payload is read);
//! - a request split across segments counts once, on the segment that carries its start, as
//!   long as that segment holds the method, the space and the `/`, and every byte it has of
//!   the target agrees with the prefix; the continuation segments do not count;
//! - a payload shorter than `METHOD /` is not a request.

/// Longest method we recognise plus its space (`OPTIONS `, `CONNECT `).
pub const HTTP_METHOD_MAX: usize = 8;
/// Longest configurable path prefix.
pub const HTTP_PATH_MAX: usize = 64;
/// Bytes of payload the kernel copies and inspects.
pub const HTTP_INSPECT_MAX: usize = HTTP_METHOD_MAX + HTTP_PATH_MAX;

/// Method tokens with their trailing space, zero-padded, and their length.
const METHODS: [([u8; HTTP_METHOD_MAX], u8); 9] = [
    (*b"GET \0\0\0\0", 4),
    (*b"POST \0\0\0", 5),
    (*b"PUT \0\0\0\0", 4),
    (*b"HEAD \0\0\0", 5),
    (*b"DELETE \0", 7),
    (*b"PATCH \0\0", 6),
    (*b"OPTIONS ", 8),
    (*b"CONNECT ", 8),
    (*b"TRACE \0\0", 6),
];

/// Length of the method token and its space at the start of `buf[..len]`, or 0.
#[inline(always)]
fn method_len(buf: &[u8; HTTP_INSPECT_MAX], len: usize) -> usize {
    let mut m = 0;
    while m < METHODS.len() {
        let (token, token_len) = METHODS[m];
        let token_len = token_len as usize;
        if len >= token_len {
            let mut i = 0;
            let mut same = true;
            while i < HTTP_METHOD_MAX {
                if i < token_len && buf[i] != token[i] {
                    same = false;
                }
                i += 1;
            }
            if same {
                return token_len;
            }
        }
        m += 1;
    }
    0
}

/// Whether `buf[..len]` (the first bytes of a TCP payload, `len <= HTTP_INSPECT_MAX`) begins
/// a request line whose target starts with `prefix[..prefix_len]` (any target when 0).
#[inline(always)]
pub fn is_request(
    buf: &[u8; HTTP_INSPECT_MAX],
    len: usize,
    prefix: &[u8; HTTP_PATH_MAX],
    prefix_len: usize,
) -> bool {
    let len = if len > HTTP_INSPECT_MAX {
        HTTP_INSPECT_MAX
    } else {
        len
    };
    let mlen = method_len(buf, len);
    if mlen == 0 || len <= mlen {
        return false;
    }
    match buf.get(mlen) {
        Some(b'/') => {}
        _ => return false,
    }
    let mut i = 0;
    while i < HTTP_PATH_MAX {
        if i >= prefix_len {
            return true;
        }
        let pos = mlen + i;
        if pos >= len {
            // The segment ends inside the prefix but agrees so far: the start of a split request.
            return true;
        }
        match (buf.get(pos), prefix.get(i)) {
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(payload: &[u8], prefix: &[u8]) -> bool {
        let mut buf = [0u8; HTTP_INSPECT_MAX];
        let n = payload.len().min(HTTP_INSPECT_MAX);
        buf[..n].copy_from_slice(&payload[..n]);
        let mut p = [0u8; HTTP_PATH_MAX];
        p[..prefix.len()].copy_from_slice(prefix);
        is_request(&buf, payload.len(), &p, prefix.len())
    }

    #[test]
    fn request_lines() {
        assert!(check(b"GET / HTTP/1.1\r\n\r\n", b""));
        assert!(check(b"POST /x HTTP/1.0\r\n", b""));
        assert!(check(b"OPTIONS /a HTTP/1.1\r\n", b"/a"));
        assert!(!check(b"GETX / HTTP/1.1\r\n", b""));
        assert!(!check(b"\x16\x03\x01\x02\x00", b""));
        assert!(!check(b"GET", b""));
        assert!(!check(b"GET ", b""));
        assert!(!check(b"get / HTTP/1.1", b""));
    }

    #[test]
    fn path_prefix() {
        let p = b"/1.1/contacts/lookup";
        assert!(check(b"GET /1.1/contacts/lookup?phone=1 HTTP/1.1\r\n", p));
        assert!(!check(b"GET /1.1/users/show HTTP/1.1\r\n", p));
        // Split inside the prefix: the first segment counts.
        assert!(check(b"GET /1.1/cont", p));
        assert!(!check(b"GET /2", p));
        // A 64-byte prefix is matched in full even with the longest method.
        let long = [b'a'; 63];
        let mut pre = std::vec![b'/'];
        pre.extend_from_slice(&long);
        let mut req = b"OPTIONS ".to_vec();
        req.extend_from_slice(&pre);
        req.extend_from_slice(b" HTTP/1.1\r\n");
        assert!(check(&req, &pre));
        let n = req.len();
        req[n - 15] = b'b';
        assert!(!check(&req, &pre));
    }
}
