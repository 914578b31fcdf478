//! A flood from more sources than a sample writes: the history gets the sources that refused
//! most, one row each, and the rest are counted (`status`'s `sampler.history_folded_sources`)
//! instead of written, so a spoofed flood from any number of addresses costs the history a
//! bounded number of rows per sample. Every source's refusals are booked exactly once, as a
//! row or as folded.

use std::{collections::HashSet, time::Duration};

use monitor::daemon::sampler::MAX_SIGHTINGS;
use monitor_common::{addr::AddrKey, table::SourceSlot};
use tests::{
    daemon::{Daemon, Paths, eventually},
    netns::Link,
    table::fill_pinned_sources,
};

const SOURCES: u32 = 5_000;

fn address(i: u32) -> [u8; 4] {
    (0x0b00_0000 + i).to_be_bytes()
}

#[test]
fn a_flood_writes_the_worst_offenders_and_counts_the_rest() {
    let link = Link::new(&["10.241.0.1/24"]);
    let paths = Paths::new();
    let d = Daemon::start(&link.server, &link.server_if, &paths, &["--port", "8443"]);

    // Sources over their limit, as a flood leaves them: source i refused i + 1 requests, so
    // the worst offenders are the highest indices.
    let entries: Vec<(AddrKey, SourceSlot)> = (0..SOURCES)
        .map(|i| {
            let refused = i + 1;
            let slot = SourceSlot {
                requests: refused + 10,
                refused,
                tat_ns: 1,
                ..SourceSlot::default()
            };
            (AddrKey::from_v4(address(i)), slot)
        })
        .collect();
    // 5,000 sources in a table sized for the default million: no set is full.
    assert_eq!(fill_pinned_sources(&paths.pin, &entries), 0);

    // Read the database itself (as `offenders` would, without its 1,000-row cap).
    let history_rows = || {
        monitor::history::History::open(&paths.db, monitor::history::Retention::default())
            .and_then(|h| h.offenders(0, usize::MAX >> 1))
            .ok()
    };
    let (folded, rows) = eventually(
        Duration::from_secs(60),
        "a sample that books every source's refusals",
        || {
            let sampler = d.json(&["status"])["sampler"].clone();
            let folded = sampler["history_folded_sources"].as_u64()?;
            let rows = history_rows()?;
            // Flushed once a second: wait until rows and folded account for every source.
            (folded > 0 && rows.len() as u64 + folded >= u64::from(SOURCES))
                .then_some((folded, rows))
        },
    );
    let written: HashSet<String> = rows.iter().map(|r| r.source.clone()).collect();
    assert_eq!(written.len(), rows.len(), "one row per source");
    eprintln!(
        "{} rows written, {folded} sources folded, of {SOURCES}",
        written.len()
    );
    assert_eq!(
        written.len() as u64 + folded,
        u64::from(SOURCES),
        "every source's refusals are booked exactly once"
    );
    // A fill that straddles two samples splits the sources between them; each sample keeps
    // its own worst, so the overall worst are written either way.
    assert!(
        written.len() <= 2 * MAX_SIGHTINGS,
        "{} rows for one flood",
        written.len()
    );
    let worst = (SOURCES - MAX_SIGHTINGS as u32..SOURCES).map(|i| {
        let [a, b, c, e] = address(i);
        format!("{a}.{b}.{c}.{e}/32")
    });
    for r in &rows {
        let [a, b, c, e] = address(0);
        let base = u32::from_be_bytes([a, b, c, e]);
        let ip: std::net::Ipv4Addr = r.source.trim_end_matches("/32").parse().expect("IPv4 row");
        let i = u32::from(ip) - base;
        assert_eq!(
            r.dropped,
            u64::from(i) + 1,
            "{} booked what it refused",
            r.source
        );
    }
    for source in worst {
        assert!(
            written.contains(&source),
            "worst offender {source} not in the history"
        );
    }
}
