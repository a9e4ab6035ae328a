-- wrk script of the tollgate load test (loadtest/run.py starts it; see loadtest/README.md).
--
-- Every request carries `Authorization: Bearer <token>`, the tokens taken in turn from the
-- file named by LT_TOKENS (one per line). A line starting with `!` is a token the target is
-- expected to refuse (forged signature); the `!` is not sent.
--
-- Environment (read when the script loads, in each Lua state wrk creates):
--   LT_TOKENS  token file (absent or empty: no Authorization header)
--   LT_PATH    request path (default /api/item)
--   LT_HOST    Host header value (default 127.0.0.1)
--   LT_COUNT   "1": count responses by status (defines response(), which costs wrk some
--              CPU per response, so it is only used by the scenarios that need the counts)
--   LT_SPLIT   "1": valid and forged requests come from different clients, as a proxy in
--              front would say: `X-Forwarded-For: 192.0.2.10` on valid ones, one of 16
--              addresses in 198.51.100.0/24 on forged ones (tollgate trusts 127.0.0.1 as a
--              proxy in the load test, so its per-client brakes can tell them apart; wrk
--              cannot choose its source address)
--   LT_CREDENTIAL  the header before each token (default `Authorization: Bearer `; the
--              apikey scenario's `X-API-Key: `)
--   LT_PROOFS  DPoP proofs (the `dpop` scenario; written by loadtest/dpop_proofs.py): the
--              proofs' common header on the first line, then one `payload.signature` per
--              line. Every request then carries `Authorization: DPoP <the first token>` and
--              `DPoP: <the next proof>`, each proof sent once, in order (one wrk thread only:
--              a second would send the same ones). When they run out, the request that found
--              none goes without a proof (it is refused, never a replay), the thread stops and
--              done() reports `proofs_short`, on which loadtest/run.py fails the run.
--
-- With LT_COUNT=1 each request also carries `X-Request-Id: lt-v` (a valid token) or `lt-f`
-- (a forged one); tollgate returns the client's request id on every answer, and the HAProxy
-- config echoes it, so response() can tell a refused valid token (a false 401) from a
-- refused forged one exactly.
--
-- done() prints one line `LTJSON {...}`: requests, duration, latency percentiles (µs),
-- wrk's own error counters, and with LT_COUNT the status counts, split by token kind.

local token_file = os.getenv("LT_TOKENS") or ""
local path = os.getenv("LT_PATH") or "/api/item"
local host = os.getenv("LT_HOST") or "127.0.0.1"
local counting = os.getenv("LT_COUNT") == "1"
local split = os.getenv("LT_SPLIT") == "1"
local proof_file = os.getenv("LT_PROOFS") or ""
-- The header a token goes in, up to the token (`X-API-Key: ` for the apikey scenario).
local credential = os.getenv("LT_CREDENTIAL") or ""
if credential == "" then
   credential = "Authorization: Bearer "
end

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   if proof_file ~= "" and #threads > 1 then
      error("LT_PROOFS needs one wrk thread (-t1): each DPoP proof may be sent only once")
   end
end

-- Per-thread state (globals of the thread's Lua state, read back in done()).
tokens = {}
expect_ok = {}
ntokens = 0
idx = 0
sent = 0
sent_valid = 0
sent_forged = 0
wraps = 0
v2xx = 0
v401 = 0
vother = 0
f2xx = 0
f401 = 0
fother = 0
unmarked = 0
st2xx = 0
st401 = 0
st403 = 0
st429 = 0
st4xx = 0
st5xx = 0
stother = 0
proofs = {}
nproofs = 0
proof_idx = 0
proofs_short = 0
dpop_prefix = nil

local prefix = "GET " .. path .. " HTTP/1.1\r\nHost: " .. host .. "\r\n"
local auth_prefix = prefix .. credential
local valid_prefix = auth_prefix
local forged_prefix = auth_prefix
if counting then
   valid_prefix = prefix .. "X-Request-Id: lt-v\r\n" .. credential
   forged_prefix = prefix .. "X-Request-Id: lt-f\r\n" .. credential
end
local suffix = "\r\n\r\n"
local forged_prefixes = { forged_prefix }
if split then
   -- After the request line and Host (both in `prefix`), before the rest.
   local function client(p, addr)
      return prefix .. "X-Forwarded-For: " .. addr .. "\r\n" .. string.sub(p, #prefix + 1)
   end
   valid_prefix = client(valid_prefix, "192.0.2.10")
   forged_prefixes = {}
   for k = 1, 16 do
      forged_prefixes[k] = client(forged_prefix, "198.51.100." .. k)
   end
end

function init(args)
   if token_file ~= "" then
      local f = assert(io.open(token_file, "r"))
      for line in f:lines() do
         if #line > 0 then
            ntokens = ntokens + 1
            if string.byte(line, 1) == 33 then -- "!"
               tokens[ntokens] = string.sub(line, 2)
               expect_ok[ntokens] = false
            else
               tokens[ntokens] = line
               expect_ok[ntokens] = true
            end
         end
      end
      f:close()
   end
   if proof_file ~= "" then
      local f = assert(io.open(proof_file, "r"))
      local header = f:read("*l")
      for line in f:lines() do
         if #line > 0 then
            nproofs = nproofs + 1
            proofs[nproofs] = line
         end
      end
      f:close()
      dpop_prefix = prefix .. "Authorization: DPoP " .. tokens[1] .. "\r\nDPoP: " .. header .. "."
   end
end

function request()
   sent = sent + 1
   if ntokens == 0 then
      return prefix .. "\r\n"
   end
   idx = idx + 1
   if idx > ntokens then
      idx = 1
      wraps = wraps + 1
   end
   if expect_ok[idx] then
      sent_valid = sent_valid + 1
      return valid_prefix .. tokens[idx] .. suffix
   end
   sent_forged = sent_forged + 1
   return forged_prefixes[(sent_forged % #forged_prefixes) + 1] .. tokens[idx] .. suffix
end

if proof_file ~= "" then
   function request()
      sent = sent + 1
      proof_idx = proof_idx + 1
      if proof_idx > nproofs then
         proofs_short = proofs_short + 1
         wrk.thread:stop()
         return prefix .. "Authorization: DPoP " .. tokens[1] .. suffix
      end
      return dpop_prefix .. proofs[proof_idx] .. suffix
   end
end

if counting then
   function response(status, headers, body)
      if status >= 200 and status < 300 then
         st2xx = st2xx + 1
      elseif status == 401 then
         st401 = st401 + 1
      elseif status == 403 then
         st403 = st403 + 1
      elseif status == 429 then
         st429 = st429 + 1
      elseif status >= 400 and status < 500 then
         st4xx = st4xx + 1
      elseif status >= 500 then
         st5xx = st5xx + 1
      else
         stother = stother + 1
      end
      local rid = headers["x-request-id"] or headers["X-Request-Id"] or headers["X-Request-ID"]
      local ok = status >= 200 and status < 300
      if rid == "lt-v" then
         if ok then v2xx = v2xx + 1 elseif status == 401 then v401 = v401 + 1 else vother = vother + 1 end
      elseif rid == "lt-f" then
         if ok then f2xx = f2xx + 1 elseif status == 401 then f401 = f401 + 1 else fother = fother + 1 end
      else
         unmarked = unmarked + 1
      end
   end
end

function done(summary, latency, requests)
   local names = { "sent", "sent_valid", "sent_forged", "wraps", "ntokens", "st2xx",
                   "st401", "st403", "st429", "st4xx", "st5xx", "stother",
                   "v2xx", "v401", "vother", "f2xx", "f401", "fother", "unmarked",
                   "nproofs", "proofs_short" }
   local totals = {}
   for _, n in ipairs(names) do totals[n] = 0 end
   for _, t in ipairs(threads) do
      for _, n in ipairs(names) do
         totals[n] = totals[n] + (tonumber(t:get(n)) or 0)
      end
   end
   local parts = {}
   local function add(k, v) table.insert(parts, string.format("%q:%s", k, v)) end
   add("requests", summary.requests)
   add("duration_us", summary.duration)
   add("bytes", summary.bytes)
   add("err_connect", summary.errors.connect)
   add("err_read", summary.errors.read)
   add("err_write", summary.errors.write)
   add("err_status", summary.errors.status)
   add("err_timeout", summary.errors.timeout)
   add("lat_mean_us", string.format("%.1f", latency.mean))
   add("lat_max_us", latency.max)
   for _, p in ipairs({ 50, 75, 90, 99, 99.9 }) do
      add("p" .. tostring(p), latency:percentile(p))
   end
   add("counting", counting and "true" or "false")
   for _, n in ipairs(names) do add(n, totals[n]) end
   io.write("LTJSON {" .. table.concat(parts, ",") .. "}\n")
end
