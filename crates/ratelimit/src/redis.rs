//! The GCRA of `gcra.rs` as a Redis Lua script, for limits shared by a fleet of gateways. This
//! crate does no I/O: the gateway sends the script (`EVALSHA`, falling back to `EVAL`) and
//! turns the reply into a verdict with [`crate::Gcra::verdict_from_redis`].

/// GCRA in Redis, atomic per key (a script runs alone on the server).
///
/// - `KEYS[1]`: the bucket key (the gateway prefixes it, e.g. `tollgate:rl:{route}:{client}`).
/// - `ARGV[1]`: emission interval `T` in microseconds (≥ 1); `ARGV[2]`: burst (≥ 1);
///   `ARGV[3]`: key TTL margin in milliseconds (≥ 0). [`crate::Gcra::redis_argv`] builds them.
/// - Reply: `{allowed (0/1), remaining, reset_after_us, retry_after_us}`, each defined as in
///   [`crate::Verdict`], in microseconds.
///
/// Time comes from the Redis server (`TIME`), so gateway instances need no synchronised
/// clocks: one clock orders every request for a key. The stored value is the TAT in
/// microseconds of that clock. It is written only when the request is admitted, with a TTL of
/// the time until the bucket is full again plus the margin: past its TAT a key is
/// indistinguishable from an absent one, so idle keys expire instead of accumulating.
///
/// Calling `TIME` (non-deterministic) before a write needs effects replication, which is the
/// default from Redis 5 and the only mode from Redis 7; Redis 3.2–4 would need
/// `redis.replicate_commands()` first, and older servers refuse the write. Arithmetic is on Lua
/// doubles, exact because [`crate::Gcra::new`] caps the burst window at 2^52 µs.
///
/// The variable names and steps are those of [`crate::Gcra::check`]; only the units differ
/// (microseconds here, nanoseconds there).
pub const REDIS_GCRA_SCRIPT: &str = r#"
local emission_interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local ttl_margin_ms = tonumber(ARGV[3])
-- ARGV[4] = '1': a dry run, which decides without recording (`tollgate explain`).
local dry_run = ARGV[4] == '1'
local burst_window = emission_interval * burst

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

-- A TAT in the past means a full bucket: idle time beyond that is not credit.
-- GET gives false for a missing key, and tonumber(false) is nil.
local tat = now
local stored_tat = tonumber(redis.call('GET', KEYS[1]))
if stored_tat and stored_tat > now then
  tat = stored_tat
end
local new_tat = tat + emission_interval

if new_tat - now <= burst_window then
  local reset_after = new_tat - now
  local remaining = math.floor((burst_window - reset_after) / emission_interval)
  -- The key may vanish once its bucket is full again: absent and full are the same.
  local ttl_ms = math.ceil(reset_after / 1000) + ttl_margin_ms
  if not dry_run then
    redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', ttl_ms)
  end
  return {1, remaining, reset_after, 0}
end

-- Denied requests do not move the TAT.
local reset_after = tat - now
local retry_after = new_tat - now - burst_window
return {0, 0, reset_after, retry_after}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_reads_server_time_and_writes_only_with_a_ttl() {
        assert!(!REDIS_GCRA_SCRIPT.trim().is_empty());
        assert!(REDIS_GCRA_SCRIPT.contains("redis.call('TIME')"));
        assert_eq!(REDIS_GCRA_SCRIPT.matches("redis.call('SET'").count(), 1);
        assert!(REDIS_GCRA_SCRIPT.contains("'PX', ttl_ms"));
        assert!(REDIS_GCRA_SCRIPT.contains("KEYS[1]"));
        for arg in ["ARGV[1]", "ARGV[2]", "ARGV[3]", "ARGV[4]"] {
            assert!(REDIS_GCRA_SCRIPT.contains(arg), "{arg}");
        }
    }

    #[test]
    fn script_uses_the_rust_variable_names() {
        // A reviewer compares the two side by side; keep the names in step.
        let rust = include_str!("gcra.rs");
        for name in [
            "emission_interval",
            "burst_window",
            "tat",
            "new_tat",
            "now",
            "reset_after",
            "remaining",
            "retry_after",
        ] {
            assert!(
                REDIS_GCRA_SCRIPT.contains(&format!("local {name} ")),
                "{name}"
            );
            assert!(rust.contains(&format!("let {name} ")), "{name}");
        }
        for step in [
            "new_tat - now <= burst_window",
            "(burst_window - reset_after) / emission_interval",
            "new_tat - now - burst_window",
        ] {
            assert!(REDIS_GCRA_SCRIPT.contains(step), "{step}");
            assert!(rust.contains(step), "{step}");
        }
    }

    #[test]
    fn script_keywords_balance() {
        // No Lua interpreter here: a cheap guard against a lost `end`.
        let code: String = REDIS_GCRA_SCRIPT
            .lines()
            .map(|line| line.split("--").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let words: Vec<&str> = code
            .split(|c: char| !c.is_alphanumeric() && c != '_')
            .collect();
        let opens = words
            .iter()
            .filter(|w| ["if", "function", "do"].contains(w))
            .count();
        let ends = words.iter().filter(|w| **w == "end").count();
        assert_eq!(opens, ends);
    }
}
