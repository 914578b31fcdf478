//! The one classifier, shared by the XDP and TC entry points: parse, pick the monitored
//! traffic, apply policy in its documented precedence, and charge the limits.
//!
//! Precedence, first match wins: allowlist (pass, never limited) > denylist (drop) > active ban
//! (drop) > source limit > aggregate limit. Deny always drops; bans and limits drop only when
//! the action is `drop` (with `monitor` they pass and count as `monitor_only`).
//!
//! What a request costs each level: one admitted at both levels spends one token of each. One
//! refused at the source level spends nothing anywhere, so a loud source cannot drain its
//! neighbours' shared aggregate. One admitted by its source and refused by the aggregate keeps
//! the source's token spent (the source did send it), and the aggregate's is not spent.

use aya_log_ebpf::{info, warn};
use monitor_common::{
    addr::AddrKey,
    config::{Config, action, config_flags, count_mode, port_flags},
    event::{Event, kind, level},
    http::{self, HTTP_INSPECT_MAX},
    maps::log_kind,
    stats::Stat,
};

use crate::{
    clock::Now,
    conn,
    frame::Frame,
    limit::{Charge, charge_key},
    maps::{MON_AGGS, MON_CONFIG, MON_PORTS, MON_SCRATCH, count},
    parse::{IPPROTO_TCP, ParseError, Parsed, TCP_FLAG_ACK, TCP_FLAG_SYN, Transport, parse},
    policy,
    sources::{self, Slot},
};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
}

/// Bytes a TC program asks to have linear when an skb's headers are not (deepest parse:
/// two VLAN tags, IPv6 with extension headers, TCP with options).
const TC_PULL_LEN: usize = 256;

#[inline(always)]
pub fn classify<F: Frame>(frame: &F) -> Verdict {
    count(Stat::Seen);
    let parsed = match parse(frame) {
        Ok(parsed) => parsed,
        Err(ParseError::Truncated) if frame.pull(TC_PULL_LEN) => match parse(frame) {
            Ok(parsed) => parsed,
            Err(_) => return malformed(),
        },
        Err(_) => return malformed(),
    };
    let pkt = match parsed {
        Parsed::Transport(pkt) => pkt,
        Parsed::LaterFragment => {
            count(Stat::Fragment);
            return Verdict::Pass;
        }
        Parsed::NotIp | Parsed::OtherProtocol => return not_monitored(),
    };
    // The verifier walks everything below once per distinct state it arrives with, and every
    // header layout the parser accepts arrives with its own known offsets and lengths. Passed
    // through per-CPU map memory, they become plain unknown numbers (the verifier does not
    // track values stored in maps), so the walks coincide and prune: without this the program
    // went over the verifier's million-instruction budget. Costs one per-CPU array slot and
    // a copy of `Transport`.
    let Some(slot) = MON_SCRATCH.get_ptr_mut(0) else {
        return malformed();
    };
    // SAFETY: this CPU's own slot, written before it is read, within this one program run.
    let pkt = unsafe {
        slot.write(pkt);
        &*slot
    };
    let want = if pkt.proto == IPPROTO_TCP {
        port_flags::TCP
    } else {
        port_flags::UDP
    };
    let monitored = match MON_PORTS.get(pkt.dport as u32) {
        Some(flags) => *flags & want != 0,
        None => false,
    };
    if !monitored {
        return not_monitored();
    }
    // The live slot of the double-buffered config (see `monitor_common::config`): one lookup,
    // one load of the index, then only that slot is read for the rest of the packet.
    let Some(slots) = MON_CONFIG.get_ptr(0) else {
        return not_monitored();
    };
    let live = unsafe { core::ptr::read_volatile(&raw const (*slots).active) } & 1;
    let cfg = unsafe { &(*slots).slots[live as usize] };
    if !cfg.is_valid() {
        return not_monitored();
    }
    count(Stat::Monitored);
    // The coarse clock; the fine one is read only where a decision needs it (`clock`).
    let mut now = Now::read();
    let verdict = decide(frame, pkt, cfg, &mut now);
    count(match verdict {
        Verdict::Pass => Stat::Passed,
        Verdict::Drop => Stat::Dropped,
    });
    verdict
}

#[inline(always)]
fn malformed() -> Verdict {
    count(Stat::Malformed);
    Verdict::Pass
}

#[inline(always)]
fn not_monitored() -> Verdict {
    count(Stat::NotMonitored);
    Verdict::Pass
}

/// A request over a limit (or from a banned source): dropped with reason `reason`, or passed
/// and counted in monitor mode.
#[inline(always)]
fn over_limit(cfg: &Config, reason: Stat) -> Verdict {
    if cfg.action == action::DROP {
        count(reason);
        Verdict::Drop
    } else {
        count(Stat::MonitorOnly);
        Verdict::Pass
    }
}

#[inline(always)]
fn decide<F: Frame>(frame: &F, pkt: &Transport, cfg: &Config, now: &mut Now) -> Verdict {
    let src = &pkt.src;
    if cfg.flags & config_flags::HAS_ALLOW != 0 && policy::allowlisted(src, pkt.is_v4, now) {
        count(Stat::Allowlisted);
        return Verdict::Pass;
    }
    if cfg.flags & config_flags::HAS_DENY != 0 && policy::denylisted(src, pkt.is_v4, now) {
        count(Stat::DroppedDeny);
        return Verdict::Drop;
    }
    let request = is_request(pkt, cfg);
    let (source_mask, agg_mask) = if pkt.is_v4 {
        (&cfg.v4_source_mask, &cfg.v4_agg_mask)
    } else {
        (&cfg.v6_source_mask, &cfg.v6_agg_mask)
    };
    let key = src.masked(source_mask);

    let Some(place) = sources::lookup(&cfg.table, &key) else {
        // No table named in the config: user space always names one, so this is a config
        // written by something else. Fail open.
        return not_monitored();
    };
    let found = place.slot();
    match found {
        Some(slot) => {
            if request {
                crate::fleet::note(&key, slot.requests(), now);
            }
            if slot.banned(&key, now) {
                if request {
                    slot.count_refused();
                }
                return over_limit(cfg, Stat::DroppedBan);
            }
        }
        None => {
            // No slot: a new source, or one a flood evicted. Its ban, if any, is in MON_BANS.
            let ban_until = policy::stored_ban(&key, now);
            if ban_until != 0 {
                policy::restore_ban(&place, &key, ban_until, request, now.earliest());
                return over_limit(cfg, Stat::DroppedBan);
            }
        }
    }
    // One place for the connection check (after the ban checks, so a banned source's packets
    // cost no lookup): the verifier walks it once, not once per lookup outcome.
    if !request || !connected(frame, pkt, cfg) || !http_line(frame, pkt, cfg) {
        count(Stat::NotCounted);
        return Verdict::Pass;
    }
    count(Stat::Requests);
    let (charge, slot) = match found {
        Some(slot) => (slot.charge(&cfg.source, now), Some(slot)),
        None => sources::admit_new(&place, &key, &cfg.source, now.fine()),
    };

    if charge == Charge::Refused {
        if let Some(slot) = slot {
            source_over_limit(frame, slot, &key, pkt, cfg, now);
        }
        return over_limit(cfg, Stat::DroppedRate);
    }
    if cfg.aggregate.is_off() {
        return Verdict::Pass;
    }
    let agg_key = src.masked(agg_mask);
    let (charge, agg_bucket) = charge_key(&MON_AGGS, &agg_key, &cfg.aggregate, now.fine());
    if charge == Charge::Refused {
        if let Some(agg_bucket) = agg_bucket
            && policy::claim_event_slot(agg_bucket, now, false)
            && policy::take_event_budget(cfg, now.fine(), false)
        {
            let now = now.fine();
            let prefix = if pkt.is_v4 {
                cfg.v4_agg_prefix
            } else {
                cfg.v6_agg_prefix
            };
            policy::emit(&event(
                &agg_key,
                unsafe { (*agg_bucket).requests },
                pkt,
                cfg,
                now,
                level::AGGREGATE,
                prefix,
                0,
            ));
        }
        return over_limit(cfg, Stat::DroppedAggregate);
    }
    Verdict::Pass
}

/// A source just went over its limit: start its ban if bans are on, and report it.
#[inline(always)]
fn source_over_limit<F: Frame>(
    frame: &F,
    slot: Slot,
    key: &AddrKey,
    pkt: &Transport,
    cfg: &Config,
    now: &mut Now,
) {
    let mut ban_until = 0;
    if cfg.ban_ns != 0 {
        let now = now.fine();
        // Log records are about conditions, not packets: at most one per kind per second.
        if policy::start_ban(slot, key, now + cfg.ban_ns) {
            ban_until = now + cfg.ban_ns;
            if policy::log_allowed(log_kind::BAN_STARTED, now) {
                info!(
                    frame.ctx(),
                    "ban started on port {} for {} ms (at most one such record per second; \
                     bans_started counts them all)",
                    pkt.dport,
                    cfg.ban_ns / 1_000_000
                );
            }
        } else if policy::log_allowed(log_kind::BANS_FULL, now) {
            warn!(
                frame.ctx(),
                "ban table full: sources are rate limited but not banned (at most one such \
                 record per second; bans_full counts them all)"
            );
        }
    }
    if policy::event_budget_left(cfg, now, ban_until != 0)
        && sources::claim_event_slot(&cfg.table, key, now, ban_until != 0)
        && policy::take_event_budget(cfg, now.fine(), ban_until != 0)
    {
        let now = now.fine();
        let prefix = if pkt.is_v4 {
            cfg.v4_prefix
        } else {
            cfg.v6_prefix
        };
        policy::emit(&event(
            key,
            slot.requests() as u64,
            pkt,
            cfg,
            now,
            level::SOURCE,
            prefix,
            ban_until,
        ));
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn event(
    key: &AddrKey,
    requests: u64,
    pkt: &Transport,
    cfg: &Config,
    now: u64,
    level: u8,
    prefix_len: u8,
    ban_until_ns: u64,
) -> Event {
    Event {
        ts_ns: now,
        addr: key.addr,
        prefix_len,
        level,
        kind: if ban_until_ns != 0 {
            kind::BAN
        } else {
            kind::OVER_LIMIT
        },
        action: cfg.action,
        proto: pkt.proto,
        is_v4: pkt.is_v4 as u8,
        dport: pkt.dport,
        requests,
        ban_until_ns,
    }
}

/// Whether this packet is one request in the configured counting mode, before the connection
/// check. The first fragment of a fragmented segment or datagram is one request in every mode
/// (UDP in `http` mode excepted, which never counts): it carries the ports, nothing reassembles
/// without it, and its own payload may be cut anywhere, even before the end of the header.
#[inline(always)]
fn is_request(pkt: &Transport, cfg: &Config) -> bool {
    let tcp = pkt.proto == IPPROTO_TCP;
    if pkt.first_fragment {
        return tcp || cfg.count_mode != count_mode::HTTP;
    }
    match cfg.count_mode {
        count_mode::SYN => {
            !tcp || (pkt.tcp_flags & TCP_FLAG_SYN != 0 && pkt.tcp_flags & TCP_FLAG_ACK == 0)
        }
        count_mode::PACKETS => true,
        // The request line itself is checked last (`http_line`), after the ban and connection
        // checks: the verifier's walk of the matcher then continues into nothing but charging.
        count_mode::HTTP => tcp && pkt.payload_len > 0,
        _ => !tcp || pkt.payload_len > 0,
    }
}

/// In `http` mode, whether the segment begins a request line; true in every other mode, and
/// for a first fragment (whose payload may stop anywhere).
#[inline(always)]
fn http_line<F: Frame>(frame: &F, pkt: &Transport, cfg: &Config) -> bool {
    cfg.count_mode != count_mode::HTTP || pkt.first_fragment || http_request(frame, pkt, cfg)
}

/// In the modes that count TCP payload, a TCP request counts only if it belongs to a connection
/// of this host (`conn`); `syn` and `packets` count what they see. Counts `unconnected`.
#[inline(always)]
fn connected<F: Frame>(frame: &F, pkt: &Transport, cfg: &Config) -> bool {
    if pkt.proto != IPPROTO_TCP
        || cfg.count_mode == count_mode::SYN
        || cfg.count_mode == count_mode::PACKETS
        || conn::belongs(frame, pkt)
    {
        return true;
    }
    count(Stat::Unconnected);
    false
}

#[inline(always)]
fn http_request<F: Frame>(frame: &F, pkt: &Transport, cfg: &Config) -> bool {
    let mut buf = [0u8; HTTP_INSPECT_MAX];
    let len = if pkt.payload_len < HTTP_INSPECT_MAX {
        pkt.payload_len
    } else {
        HTTP_INSPECT_MAX
    };
    if !frame.load_bytes(pkt.payload_offset, &mut buf, len) {
        return false;
    }
    http::is_request(&buf, len, &cfg.http_path, cfg.http_path_len as usize)
}
