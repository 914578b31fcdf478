//! The traffic: four client classes, their address plan and pacing, and the tally of what each
//! request got (served or dropped, per second and per source).
//!
//! Pacing is part of the scenario, fixed here and identical in both runs; the monitor is never
//! tuned to it. A request counts as dropped when it gets no answer within its class's timeout:
//! a dropped SYN or a dropped request segment stalls a TCP connection (retransmissions back
//! off for seconds), so waiting longer would only hide the drop.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rand::{Rng as _, SeedableRng as _, rngs::StdRng, seq::SliceRandom as _};
use serde::Serialize;
use tokio::{
    net::{TcpSocket, TcpStream},
    sync::watch,
    task::JoinSet,
    time::MissedTickBehavior,
};

use super::{
    http,
    service::{self, LOOKUP_PATH, PhoneBook},
    world::{API_V4, API_V6, LOOKUP_PORT, Role, v4},
};

/// Legitimate users: one lookup every 1 to 3 s each, a new connection per lookup.
const LEGIT_V4: [[u8; 4]; 3] = [[198, 18, 16, 10], [198, 18, 17, 20], [198, 18, 18, 30]];
const LEGIT_V6: [u16; 2] = [1, 2]; // fd00:1:N::10, one /48 each
const LEGIT_PACE_MS: (u64, u64) = (1000, 3000);
const LEGIT_TIMEOUT: Duration = Duration::from_secs(2);
/// The loud scraper: one IPv4 address, keep-alive connections, this many requests/s in total.
const LOUD_ADDR: [u8; 4] = [198, 18, 64, 66];
const LOUD_RATE: u32 = 3000;
const LOUD_CONNS: u32 = 16;
/// The distributed scraper: many IPv4 addresses of one /24, each keep-alive at a modest rate,
/// plus workers that rotate through random addresses of one IPv6 /64, a new address and
/// connection per request.
const DIST_V4_NET: [u8; 3] = [198, 18, 96];
const DIST_V4_ADDRS: u8 = 32;
const DIST_V4_RATE_EACH: u32 = 40;
const DIST_V6_NET: [u16; 4] = [0xfd00, 0x77, 0, 7];
const DIST_V6_WORKERS: u32 = 8;
const DIST_V6_RATE_EACH: u32 = 50;
/// The low-and-slow scraper: addresses in unrelated /24s and /48s, each one lookup every 2 to
/// 4 s, a new connection each: under every per-source and per-prefix limit.
const SLOW_V4_ADDRS: usize = 48;
const SLOW_V6_ADDRS: usize = 16;
const SLOW_PACE_MS: (u64, u64) = (2000, 4000);
/// Scrapers give up on a stalled request sooner than people do.
const SCRAPER_TIMEOUT: Duration = Duration::from_secs(1);
/// Where each scraper starts enumerating in the phone book.
const LOUD_START: u32 = 0;
const DIST_START: u32 = 500_000;
const SLOW_START: u32 = 900_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    Legit,
    Loud,
    Distributed,
    LowAndSlow,
}

impl Class {
    pub const ALL: [Class; 4] = [
        Class::Legit,
        Class::Loud,
        Class::Distributed,
        Class::LowAndSlow,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Class::Legit => "legit",
            Class::Loud => "loud",
            Class::Distributed => "distributed",
            Class::LowAndSlow => "low-and-slow",
        }
    }

    pub fn role(self) -> Role {
        match self {
            Class::Legit => Role::Legit,
            Class::Loud => Role::Loud,
            Class::Distributed => Role::Distributed,
            Class::LowAndSlow => Role::LowSlow,
        }
    }

    /// The scrapers whose stopping the demo promises (low-and-slow is shown, not promised).
    pub fn stoppable_attacker(self) -> bool {
        matches!(self, Class::Loud | Class::Distributed)
    }

    fn index(self) -> usize {
        self as usize
    }
}

const NONE: u64 = u64::MAX;

/// What happened to one source (an address, or for rotating IPv6 its /64), or to a group of
/// sources (the distributed /24).
pub struct Unit {
    pub class: Class,
    /// The source as the monitor keys it by default: a /32, a /64, or a group's prefix.
    pub source: String,
    pub group: Option<usize>,
    first_ns: AtomicU64,
    first_drop_ns: AtomicU64,
    served: AtomicU64,
    dropped: AtomicU64,
    served_after_drop: AtomicU64,
}

impl Unit {
    fn new(class: Class, source: String, group: Option<usize>) -> Self {
        Self {
            class,
            source,
            group,
            first_ns: AtomicU64::new(NONE),
            first_drop_ns: AtomicU64::new(NONE),
            served: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            served_after_drop: AtomicU64::new(0),
        }
    }

    fn record(&self, at_ns: u64, served: bool) {
        self.first_ns.fetch_min(at_ns, Ordering::Relaxed);
        if served {
            self.served.fetch_add(1, Ordering::Relaxed);
            if self.first_drop_ns.load(Ordering::Relaxed) <= at_ns {
                self.served_after_drop.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.first_drop_ns.fetch_min(at_ns, Ordering::Relaxed);
        }
    }

    pub fn summary(&self, duration: Duration) -> UnitSummary {
        let secs = |ns: u64| (ns != NONE).then(|| ns as f64 / 1e9);
        let first = secs(self.first_ns.load(Ordering::Relaxed));
        let first_drop = secs(self.first_drop_ns.load(Ordering::Relaxed));
        let after = self.served_after_drop.load(Ordering::Relaxed);
        UnitSummary {
            class: self.class,
            source: self.source.clone(),
            served: self.served.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            first_request_s: first,
            time_to_first_drop_s: first.zip(first_drop).map(|(f, d)| (d - f).max(0.0)),
            served_per_s_after_first_drop: first_drop.map(|d| {
                let left = (duration.as_secs_f64() - d).max(1.0);
                after as f64 / left
            }),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct UnitSummary {
    pub class: Class,
    pub source: String,
    pub served: u64,
    pub dropped: u64,
    pub first_request_s: Option<f64>,
    /// How long after its first request the source first went unanswered.
    pub time_to_first_drop_s: Option<f64>,
    /// Requests still answered per second after that (0 once stopped outright).
    pub served_per_s_after_first_drop: Option<f64>,
}

/// Counters shared by every client of a run.
pub struct Tally {
    pub start: Instant,
    pub secs: usize,
    /// `[class][second] -> (served, dropped)`, flattened.
    timeline: Vec<(AtomicU64, AtomicU64)>,
    resolved: [AtomicU64; 4],
    pub units: Vec<Unit>,
}

impl Tally {
    fn slot(&self, class: Class, sec: usize) -> &(AtomicU64, AtomicU64) {
        &self.timeline[class.index() * self.secs + sec.min(self.secs - 1)]
    }

    /// Records an outcome at the moment it became known (an answer, or the timeout), so the
    /// per-second progress line is final as soon as its second is over.
    fn record(&self, class: Class, unit: usize, started: Instant, outcome: Outcome) {
        let at = self.start.elapsed();
        let slot = self.slot(class, at.as_secs() as usize);
        let served = !matches!(outcome, Outcome::Dropped);
        if served {
            slot.0.fetch_add(1, Ordering::Relaxed);
        } else {
            slot.1.fetch_add(1, Ordering::Relaxed);
        }
        if matches!(outcome, Outcome::Found) {
            self.resolved[class.index()].fetch_add(1, Ordering::Relaxed);
        }
        // Time to stop counts from when the refused request was sent, not from its timeout.
        let at_ns = started.saturating_duration_since(self.start).as_nanos() as u64;
        if let Some(u) = self.units.get(unit) {
            u.record(at_ns, served);
            if let Some(g) = u.group.and_then(|g| self.units.get(g)) {
                g.record(at_ns, served);
            }
        }
    }

    /// Served and dropped in one second.
    pub fn second(&self, class: Class, sec: usize) -> (u64, u64) {
        let s = self.slot(class, sec);
        (s.0.load(Ordering::Relaxed), s.1.load(Ordering::Relaxed))
    }

    pub fn totals(&self, class: Class) -> ClassTotals {
        let (mut served, mut dropped) = (0, 0);
        for sec in 0..self.secs {
            let (s, d) = self.second(class, sec);
            served += s;
            dropped += d;
        }
        ClassTotals {
            served,
            dropped,
            resolved: self.resolved[class.index()].load(Ordering::Relaxed),
        }
    }

    /// Per second of the run (the spare last slot only ever holds stragglers).
    pub fn series(&self, class: Class) -> Vec<(u64, u64)> {
        (0..self.secs - 1).map(|s| self.second(class, s)).collect()
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ClassTotals {
    /// Requests answered (200 or 404).
    pub served: u64,
    /// Requests that got no answer in time.
    pub dropped: u64,
    /// Phone numbers answered with an account.
    pub resolved: u64,
}

enum Outcome {
    Found,
    Answered,
    Dropped,
}

/// One source a client class sends from.
#[derive(Clone)]
enum Source {
    Fixed(IpAddr),
    /// A fresh random address of this /64 for every request.
    Rotating([u16; 4]),
}

struct Worker {
    class: Class,
    source: Source,
    unit: usize,
    /// Requests per second (paced), or a random gap per request.
    pace: Pace,
    keep_alive: bool,
    timeout: Duration,
    numbers: Numbers,
    seed: u64,
}

#[derive(Clone, Copy)]
enum Pace {
    Rate(f64),
    Gap(u64, u64),
}

#[derive(Clone)]
enum Numbers {
    /// Enumerate sequentially from a shared counter.
    Sequential(Arc<AtomicU32>),
    /// Look up one of these.
    Known(Arc<Vec<u32>>),
}

/// The whole traffic plan of a run; `units` index into the tally.
pub struct Scenario {
    workers: Vec<Worker>,
    pub tally: Arc<Tally>,
}

impl Scenario {
    pub fn new(seed: u64, duration: Duration, book: &PhoneBook) -> Self {
        let mut units = Vec::new();
        let mut workers = Vec::new();
        let mut rng = StdRng::seed_from_u64(seed);
        let unit = |units: &mut Vec<Unit>, class, source: String, group| {
            units.push(Unit::new(class, source, group));
            units.len() - 1
        };

        let legit_v6 = LEGIT_V6.map(|n| IpAddr::V6(Ipv6Addr::new(0xfd00, 1, n, 0, 0, 0, 0, 0x10)));
        let legit = LEGIT_V4
            .map(|[a, b, c, d]| v4(a, b, c, d))
            .into_iter()
            .chain(legit_v6);
        for (i, addr) in legit.enumerate() {
            let from = rng.random_range(0..service::BOOK_SPAN - 10_000);
            let known = Arc::new(book.registered(from, 5));
            let u = unit(&mut units, Class::Legit, host_cidr(addr), None);
            workers.push(Worker {
                class: Class::Legit,
                source: Source::Fixed(addr),
                unit: u,
                pace: Pace::Gap(LEGIT_PACE_MS.0, LEGIT_PACE_MS.1),
                keep_alive: false,
                timeout: LEGIT_TIMEOUT,
                numbers: Numbers::Known(known),
                seed: seed.wrapping_add(100 + i as u64),
            });
        }

        let loud = v4(LOUD_ADDR[0], LOUD_ADDR[1], LOUD_ADDR[2], LOUD_ADDR[3]);
        let u = unit(&mut units, Class::Loud, host_cidr(loud), None);
        let seq = Arc::new(AtomicU32::new(LOUD_START));
        for i in 0..LOUD_CONNS {
            workers.push(Worker {
                class: Class::Loud,
                source: Source::Fixed(loud),
                unit: u,
                pace: Pace::Rate(f64::from(LOUD_RATE) / f64::from(LOUD_CONNS)),
                keep_alive: true,
                timeout: SCRAPER_TIMEOUT,
                numbers: Numbers::Sequential(seq.clone()),
                seed: seed.wrapping_add(200 + u64::from(i)),
            });
        }

        let [a, b, c] = DIST_V4_NET;
        let group = unit(
            &mut units,
            Class::Distributed,
            format!("{a}.{b}.{c}.0/24"),
            None,
        );
        let seq = Arc::new(AtomicU32::new(DIST_START));
        for i in 0..DIST_V4_ADDRS {
            let addr = v4(a, b, c, 10 + i);
            let u = unit(&mut units, Class::Distributed, host_cidr(addr), Some(group));
            workers.push(Worker {
                class: Class::Distributed,
                source: Source::Fixed(addr),
                unit: u,
                pace: Pace::Rate(f64::from(DIST_V4_RATE_EACH)),
                keep_alive: true,
                timeout: SCRAPER_TIMEOUT,
                numbers: Numbers::Sequential(seq.clone()),
                seed: seed.wrapping_add(300 + u64::from(i)),
            });
        }
        let [p0, p1, p2, p3] = DIST_V6_NET;
        let v6_net = format!("{}/64", Ipv6Addr::new(p0, p1, p2, p3, 0, 0, 0, 0));
        let u = unit(&mut units, Class::Distributed, v6_net, None);
        for i in 0..DIST_V6_WORKERS {
            workers.push(Worker {
                class: Class::Distributed,
                source: Source::Rotating(DIST_V6_NET),
                unit: u,
                pace: Pace::Rate(f64::from(DIST_V6_RATE_EACH)),
                keep_alive: false,
                timeout: SCRAPER_TIMEOUT,
                numbers: Numbers::Sequential(seq.clone()),
                seed: seed.wrapping_add(400 + u64::from(i)),
            });
        }

        let seq = Arc::new(AtomicU32::new(SLOW_START));
        let mut third_octets: Vec<u8> = (0..=255).collect();
        third_octets.shuffle(&mut rng);
        let slow_v4 = third_octets[..SLOW_V4_ADDRS]
            .iter()
            .map(|&c| v4(198, 19, c, rng.random_range(1..=254)))
            .collect::<Vec<_>>();
        let slow_v6: Vec<IpAddr> = (0..SLOW_V6_ADDRS)
            .map(|i| {
                // Distinct /48s: the third group differs for every address.
                let third = (i as u16) * 0x0f1d + rng.random_range(0..0x0f00);
                IpAddr::V6(Ipv6Addr::new(
                    0xfd00,
                    5,
                    third,
                    rng.random(),
                    0,
                    0,
                    0,
                    rng.random_range(1..0xffff),
                ))
            })
            .collect();
        for (i, addr) in slow_v4.into_iter().chain(slow_v6).enumerate() {
            let u = unit(&mut units, Class::LowAndSlow, host_cidr(addr), None);
            workers.push(Worker {
                class: Class::LowAndSlow,
                source: Source::Fixed(addr),
                unit: u,
                pace: Pace::Gap(SLOW_PACE_MS.0, SLOW_PACE_MS.1),
                keep_alive: false,
                timeout: SCRAPER_TIMEOUT,
                numbers: Numbers::Sequential(seq.clone()),
                seed: seed.wrapping_add(500 + i as u64),
            });
        }

        let secs = duration.as_secs().max(1) as usize + 1;
        let tally = Tally {
            start: Instant::now(),
            secs,
            timeline: (0..secs * Class::ALL.len())
                .map(|_| (AtomicU64::new(0), AtomicU64::new(0)))
                .collect(),
            resolved: Default::default(),
            units,
        };
        Self {
            workers,
            tally: Arc::new(tally),
        }
    }

    /// Splits the workers by class (each class runs in its own namespace).
    pub fn take_class(&mut self, class: Class) -> ClassRun {
        let (mine, rest) = std::mem::take(&mut self.workers)
            .into_iter()
            .partition(|w| w.class == class);
        self.workers = rest;
        ClassRun {
            workers: mine,
            tally: self.tally.clone(),
        }
    }
}

/// The workers of one class, ready to run in that class's namespace.
pub struct ClassRun {
    workers: Vec<Worker>,
    tally: Arc<Tally>,
}

impl ClassRun {
    /// Runs every worker from `start` until `start + duration`, or until `stop` turns true.
    pub async fn run(
        self,
        start: Instant,
        duration: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::from_std(start + duration);
        let mut set = JoinSet::new();
        for w in self.workers {
            set.spawn(worker(w, self.tally.clone(), deadline));
        }
        tokio::select! {
            _ = async { while set.join_next().await.is_some() {} } => {}
            _ = stop.changed() => set.abort_all(),
        }
        Ok(())
    }
}

async fn worker(w: Worker, tally: Arc<Tally>, deadline: tokio::time::Instant) {
    let mut rng = StdRng::seed_from_u64(w.seed);
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(1024);
    let mut interval = match w.pace {
        Pace::Rate(r) => {
            let period = Duration::from_secs_f64(1.0 / r.max(0.001));
            // Start the workers of one class out of phase so they do not fire in lockstep.
            let offset = Duration::from_secs_f64(rng.random::<f64>() * period.as_secs_f64());
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
            // A stalled worker does not catch up afterwards in a burst: it lost those requests.
            i.set_missed_tick_behavior(MissedTickBehavior::Skip);
            Some(i)
        }
        Pace::Gap(..) => None,
    };
    let mut gap_first = true;
    loop {
        match (&mut interval, w.pace) {
            (Some(i), _) => {
                i.tick().await;
            }
            (None, Pace::Gap(lo, hi)) => {
                // The first gap is drawn from zero, so that slow clients do not all start at
                // once a few seconds into the run.
                let lo = if std::mem::take(&mut gap_first) {
                    0
                } else {
                    lo
                };
                let gap = Duration::from_millis(rng.random_range(lo..=hi));
                if tokio::time::Instant::now() + gap >= deadline {
                    return;
                }
                tokio::time::sleep(gap).await;
            }
            (None, Pace::Rate(_)) => return,
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return;
        }
        let number = match &w.numbers {
            Numbers::Sequential(seq) => seq.fetch_add(1, Ordering::Relaxed),
            Numbers::Known(list) => list[rng.random_range(0..list.len())],
        };
        let source = match &w.source {
            Source::Fixed(a) => *a,
            Source::Rotating([a, b, c, d]) => {
                let r: u64 = rng.random();
                let g = |s: u32| (r >> s) as u16;
                IpAddr::V6(Ipv6Addr::new(
                    *a,
                    *b,
                    *c,
                    *d,
                    g(48),
                    g(32),
                    g(16),
                    g(0).max(1),
                ))
            }
        };
        let target = format!("{LOOKUP_PATH}?phone={}", service::phone(number));
        // No request outlives the run: the last ones are cut at the deadline.
        let started = now.into_std();
        let limit = w.timeout.min(deadline.saturating_duration_since(now));
        let result = tokio::time::timeout(
            limit,
            request(&mut conn, source, &target, w.keep_alive, &mut buf),
        )
        .await;
        let cut_by_deadline = result.is_err() && limit < w.timeout;
        let outcome = match result {
            Ok(Ok(resp)) if resp.status == 200 && resp.body.contains("\"account\"") => {
                Outcome::Found
            }
            Ok(Ok(_)) => Outcome::Answered,
            _ => {
                // The connection is stuck (its request was dropped) or broken: abandon it with
                // a reset rather than leaving the kernel to retransmit into the void.
                if let Some(c) = conn.take() {
                    abandon(c);
                }
                Outcome::Dropped
            }
        };
        // A request still waiting when the run ends was neither served nor dropped.
        if !cut_by_deadline {
            tally.record(w.class, w.unit, started, outcome);
        }
    }
}

async fn request(
    conn: &mut Option<TcpStream>,
    source: IpAddr,
    target: &str,
    keep_alive: bool,
    buf: &mut Vec<u8>,
) -> std::io::Result<http::Response> {
    let mut stream = match conn.take() {
        Some(s) => s,
        None => connect(source).await?,
    };
    let resp = http::get(&mut stream, buf, target, keep_alive).await?;
    if keep_alive && !resp.closes {
        *conn = Some(stream);
    }
    Ok(resp)
}

async fn connect(source: IpAddr) -> std::io::Result<TcpStream> {
    let (socket, dst) = match source {
        IpAddr::V4(_) => (
            TcpSocket::new_v4()?,
            SocketAddr::from((API_V4, LOOKUP_PORT)),
        ),
        IpAddr::V6(_) => (
            TcpSocket::new_v6()?,
            SocketAddr::from((API_V6, LOOKUP_PORT)),
        ),
    };
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(dst).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn abandon(stream: TcpStream) {
    if let Ok(std) = stream.into_std() {
        let _ = socket_linger_zero(&std);
    }
}

/// SO_LINGER with a zero timeout: close() sends a reset and discards unsent data.
fn socket_linger_zero(stream: &std::net::TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized linger struct.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn host_cidr(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}
