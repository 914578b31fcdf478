//! Just enough HTTP/1.1 for the demo, on both sides of a tokio `TcpStream`: one request or
//! response head at a time, parsed with `httparse`, bodies framed by Content-Length, every size
//! bounded. Each request is written with a single `write_all` of a few hundred bytes, so on the
//! wire it is one TCP segment with payload: one request as the monitor's default `payload`
//! counting sees it.

use std::io;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// Request and response heads larger than this are refused.
const MAX_HEAD: usize = 8 * 1024;
/// Response bodies larger than this are refused (the service answers with tiny JSON).
const MAX_BODY: usize = 64 * 1024;
const MAX_HEADERS: usize = 32;

/// Reads bytes into `buf` until it holds a complete head; returns the head's length, or None at
/// a clean end of stream before any byte of a new message.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
    loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(pos + 4));
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
        }
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// A parsed request: what the service needs of it.
pub struct Request {
    pub method: String,
    pub target: String,
    /// Whether the client asked to keep the connection open after the response.
    pub keep_alive: bool,
}

/// Reads the next request on a server connection (None when the client closed cleanly).
/// Request bodies are not supported: the lookup is a GET.
pub async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> io::Result<Option<Request>> {
    let Some(len) = read_head(stream, buf).await? else {
        return Ok(None);
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&buf[..len]) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(invalid("malformed request")),
    }
    let http11 = req.version == Some(1);
    let connection = header(req.headers, "connection").map(|v| v.to_ascii_lowercase());
    let keep_alive = match connection.as_deref() {
        Some("close") => false,
        Some("keep-alive") => true,
        _ => http11,
    };
    let request = Request {
        method: req.method.unwrap_or("").to_string(),
        target: req.path.unwrap_or("").to_string(),
        keep_alive,
    };
    buf.drain(..len);
    Ok(Some(request))
}

fn header<'a>(headers: &'a [httparse::Header<'_>], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::trim)
}

/// Writes a JSON response in one write.
pub async fn write_response(
    stream: &mut TcpStream,
    status: u16,
    reason: &str,
    body: &str,
    keep_alive: bool,
) -> io::Result<()> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let msg = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: {connection}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(msg.as_bytes()).await
}

/// A response as the client sees it.
pub struct Response {
    pub status: u16,
    pub body: String,
    /// The server will close the connection after this response.
    pub closes: bool,
}

/// Sends one GET and reads its response on a client connection.
pub async fn get(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    target: &str,
    keep_alive: bool,
) -> io::Result<Response> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: api.demo\r\nUser-Agent: monitor-demo\r\n\
         Accept: application/json\r\nConnection: {connection}\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await?;
    buf.clear();
    let Some(len) = read_head(stream, buf).await? else {
        return Err(io::ErrorKind::UnexpectedEof.into());
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&buf[..len]) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(invalid("malformed response")),
    }
    let status = resp.code.ok_or_else(|| invalid("no status"))?;
    let body_len: usize = header(resp.headers, "content-length")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| invalid("no content-length"))?;
    if body_len > MAX_BODY {
        return Err(invalid("body too large"));
    }
    let closes =
        header(resp.headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let mut body = buf[len..].to_vec();
    while body.len() < body_len {
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(body_len);
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        closes,
    })
}
