//! The API host's contact-lookup service: `GET /1.1/contacts/lookup?phone=+1555NNNNNNN`
//! answers 200 with the account registered to that number, or 404. The phone book is generated
//! from the seed, so the same seed gives the same answers in both runs.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use tokio::{net::TcpListener, sync::watch};

use super::http;

pub const LOOKUP_PATH: &str = "/1.1/contacts/lookup";
/// Numbers `+1555` followed by 7 digits; the book covers the first `BOOK_SPAN` of them.
pub const BOOK_SPAN: u32 = 1_000_000;
/// The share of numbers in the book that belong to an account.
const DENSITY: f64 = 0.3;
/// An idle keep-alive connection is closed after this long.
const IDLE: Duration = Duration::from_secs(10);

/// The generated table: `accounts[n]` is the account id registered to number n, 0 for none.
pub struct PhoneBook {
    accounts: Vec<u32>,
}

impl PhoneBook {
    pub fn generate(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
        let accounts = (0..BOOK_SPAN)
            .map(|_| {
                if rng.random_bool(DENSITY) {
                    rng.random_range(1..=0x00ff_ffff)
                } else {
                    0
                }
            })
            .collect();
        Self { accounts }
    }

    pub fn account(&self, number: u32) -> Option<String> {
        match self.accounts.get(number as usize) {
            Some(&id) if id != 0 => Some(format!("user_{id:06x}")),
            _ => None,
        }
    }

    /// The first `n` registered numbers at or after `from` (legitimate users look up people
    /// they know, so their numbers exist).
    pub fn registered(&self, from: u32, n: usize) -> Vec<u32> {
        (from..BOOK_SPAN)
            .filter(|&i| self.accounts[i as usize] != 0)
            .take(n)
            .collect()
    }
}

pub fn phone(number: u32) -> String {
    format!("+1555{number:07}")
}

fn parse_phone(target: &str) -> Option<u32> {
    let query = target.strip_prefix(LOOKUP_PATH)?.strip_prefix('?')?;
    let value = query.split('&').find_map(|kv| kv.strip_prefix("phone="))?;
    // `+` may arrive percent-encoded.
    let value = value
        .strip_prefix("%2B")
        .or_else(|| value.strip_prefix('+'))
        .unwrap_or(value);
    let digits = value.strip_prefix("1555")?;
    if digits.len() != 7 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Serves until `stop` turns true. Binds `[::]:port`, which also accepts IPv4 (the namespace's
/// `bindv6only` is 0).
pub async fn serve(
    port: u16,
    book: Arc<PhoneBook>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let addr = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the lookup service to {addr}"))?;
    loop {
        tokio::select! {
            _ = stop.changed() => return Ok(()),
            accepted = listener.accept() => {
                // Accept errors (e.g. the peer reset before accept) concern one connection only.
                let Ok((stream, _)) = accepted else { continue };
                let book = book.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(120), connection(stream, book)).await;
                });
            }
        }
    }
}

async fn connection(
    mut stream: tokio::net::TcpStream,
    book: Arc<PhoneBook>,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(1024);
    loop {
        let req = match tokio::time::timeout(IDLE, http::read_request(&mut stream, &mut buf)).await
        {
            Ok(Ok(Some(req))) => req,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                let body = r#"{"error":"bad request"}"#;
                return http::write_response(&mut stream, 400, "Bad Request", body, false).await;
            }
            _ => return Ok(()),
        };
        let (status, reason, body) = if req.method != "GET" {
            (
                405,
                "Method Not Allowed",
                r#"{"error":"method not allowed"}"#.to_string(),
            )
        } else if !req.target.starts_with(LOOKUP_PATH) {
            (
                404,
                "Not Found",
                r#"{"error":"no such endpoint"}"#.to_string(),
            )
        } else {
            match parse_phone(&req.target) {
                None => (
                    400,
                    "Bad Request",
                    r#"{"error":"phone must be +1555NNNNNNN"}"#.to_string(),
                ),
                Some(n) => match book.account(n) {
                    Some(acct) => (
                        200,
                        "OK",
                        format!(r#"{{"phone":"{}","account":"{acct}"}}"#, phone(n)),
                    ),
                    None => (404, "Not Found", r#"{"error":"no account"}"#.to_string()),
                },
            }
        };
        http::write_response(&mut stream, status, reason, &body, req.keep_alive).await?;
        if !req.keep_alive {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_phone_numbers_and_refuses_others() {
        assert_eq!(
            parse_phone("/1.1/contacts/lookup?phone=+15550000042"),
            Some(42)
        );
        assert_eq!(
            parse_phone("/1.1/contacts/lookup?x=1&phone=%2B15559999999"),
            Some(9_999_999)
        );
        assert_eq!(parse_phone("/1.1/contacts/lookup?phone=+1555123"), None);
        assert_eq!(
            parse_phone("/1.1/contacts/lookup?phone=+4455500000000"),
            None
        );
        assert_eq!(parse_phone("/other?phone=+15550000042"), None);
    }

    #[test]
    fn the_same_seed_gives_the_same_book() {
        let (a, b, c) = (
            PhoneBook::generate(7),
            PhoneBook::generate(7),
            PhoneBook::generate(8),
        );
        let sample: Vec<_> = (0..1000).map(|n| a.account(n)).collect();
        assert_eq!(sample, (0..1000).map(|n| b.account(n)).collect::<Vec<_>>());
        assert_ne!(sample, (0..1000).map(|n| c.account(n)).collect::<Vec<_>>());
        let found = sample.iter().filter(|s| s.is_some()).count();
        assert!(
            (200..400).contains(&found),
            "density about 30%, got {found}/1000"
        );
        assert!(a.registered(0, 5).iter().all(|&n| a.account(n).is_some()));
    }
}
