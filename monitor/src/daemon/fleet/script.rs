//! What the fleet keeps in Redis, and the two Lua scripts that change it. Every key carries
//! the hash tag `{monitor-fleet}`, so all of a batch's keys live in one slot and the scripts
//! run unchanged on Redis Cluster (and Valkey).
//!
//! - `{monitor-fleet}:hosts`: sorted set, fleet id -> last heartbeat (Redis time, ms).
//! - `{monitor-fleet}:n:<key>`: hash, window number -> requests the fleet saw in it.
//! - `{monitor-fleet}:d:<key>`: the decision lock (`SET NX PX`): whoever sets it publishes.
//! - `{monitor-fleet}:bans`: the stream of ban, block and unblock entries.
//! - `{monitor-fleet}:active`: sorted set, CIDR -> expiry (Unix ms), for start-up and catch-up.
//!
//! The estimate is Cloudflare's two-window approximation: with `p` and `c` the counts of the
//! previous and the current window and `f` the fraction of the current window gone by, the
//! requests in the last window are about `p * (1 - f) + c`.

use redis::Script;

pub const TAG: &str = "{monitor-fleet}";

pub fn hosts_key() -> String {
    format!("{TAG}:hosts")
}

pub fn stream_key() -> String {
    format!("{TAG}:bans")
}

pub fn active_key() -> String {
    format!("{TAG}:active")
}

pub fn count_key(key: &str) -> String {
    format!("{TAG}:n:{key}")
}

pub fn decision_key(key: &str) -> String {
    format!("{TAG}:d:{key}")
}

/// Entries the stream keeps (approximately); older ones are covered by the active set.
pub const STREAM_MAXLEN: u64 = 100_000;

/// KEYS: hosts, stream, active, then per published key its count key and decision key.
/// ARGV: id, window ms, ban ms, host ttl ms, stream maxlen, then per key: CIDR, count, limit
/// (requests per window above which the fleet bans), reason.
/// Returns: Redis time (ms), live host ids, each key's estimate (strings), the keys this call
/// banned.
const PUBLISH: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
local window = tonumber(ARGV[2])
local ban_ms = tonumber(ARGV[3])
local host_ttl = tonumber(ARGV[4])
local maxlen = ARGV[5]
redis.call('ZADD', KEYS[1], now, id)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 86400000)
local hosts = redis.call('ZRANGEBYSCORE', KEYS[1], now - host_ttl, '+inf')
local w = math.floor(now / window)
local f = (now - w * window) / window
local est = {}
local banned = {}
local n = (#KEYS - 3) / 2
for i = 1, n do
  local ck = KEYS[2 + 2 * i]
  local dk = KEYS[3 + 2 * i]
  local src = ARGV[2 + 4 * i]
  local count = tonumber(ARGV[3 + 4 * i])
  local limit = tonumber(ARGV[4 + 4 * i])
  local reason = ARGV[5 + 4 * i]
  local cur = redis.call('HINCRBY', ck, w, count)
  local prev = tonumber(redis.call('HGET', ck, w - 1) or '0')
  redis.call('HDEL', ck, w - 2, w - 3)
  redis.call('PEXPIRE', ck, window * 3)
  local e = prev * (1 - f) + cur
  est[i] = string.format('%.1f', e)
  if e > limit then
    -- Half the ban: a key still over the limit then renews its ban before it lapses.
    local lock = math.max(1, math.floor(ban_ms / 2))
    if redis.call('SET', dk, id, 'NX', 'PX', lock) then
      local until_ms = now + ban_ms
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', 'op', 'ban', 'src', src,
        'until', until_ms, 'origin', id, 'reason', reason)
      redis.call('ZADD', KEYS[3], until_ms, src)
      banned[#banned + 1] = src
    end
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
return {now, hosts, est, banned}
"#;

/// KEYS: stream, active, the CIDR's decision key, its count key.
/// ARGV: op (block|unblock), CIDR, until ms, origin, reason, stream maxlen.
/// Returns the entry's id, or false for a block that expired before it could be published.
const CONTROL: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] == 'block' then
  if tonumber(ARGV[3]) <= now then return false end
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
else
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('DEL', KEYS[3], KEYS[4])
end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[6], '*', 'op', ARGV[1], 'src', ARGV[2],
  'until', ARGV[3], 'origin', ARGV[4], 'reason', ARGV[5])
"#;

pub fn publish() -> Script {
    Script::new(PUBLISH)
}

pub fn control() -> Script {
    Script::new(CONTROL)
}
