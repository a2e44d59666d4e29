--[[
limiter.lua: the shared admission state of one ghlproxy key in Redis, and the only code that
reads or changes it. Every proxy process asks this script, one EVALSHA per decision, with Redis
TIME as the only clock, so that many processes keep the limiter contract (DESIGN.md) as if they
were one. The arithmetic is src/window.c's, function for function (the names below follow it);
tests/vectors/window.vec is the judge: tests/integration/test_redis_vectors.c runs it here.

It owns four keys (KEYS, always these, in this order; all carry the hash tag of the request's
daily key, so that one cluster slot holds a key's whole state):
  KEYS[1] P:{dk}:b:<bk>  LIST, the admission times (ms), newest at index 0, at most N entries,
                         none older than the window (W + guard) as of the last write
  KEYS[2] P:{dk}:mb:<bk> HASH, burst meta: n, w (learned N, W; absent: the configured ones),
                         blk (burst 429 until), hlr/hlu (HighLevel's burst remaining, believed
                         until hlu)
  KEYS[3] P:{dk}:d       HASH, daily buckets: <idx> = count for idx = floor(t / 300000); tot (the
                         sum of the bucket fields), lo (no bucket below it), hi (the newest bucket)
  KEYS[4] P:{dk}:md      HASH, daily meta: d (learned D), blk (daily 429 until), hlr/hlu
                         (HighLevel's daily remaining and its reset)
Memory per key is bounded: N list entries, at most 289 bucket fields plus tot/lo/hi, fixed meta.
What no longer holds (an ended block or budget, buckets past the day) is deleted on the next
write, and the keys carry TTLs (PEXPIRE, set as set_ttls says), so an idle key disappears by
itself:
  list, burst meta: (W + guard) * 2 + 1000, longer while a block or budget still holds, or while
                    the newest entry is ahead of now (a clock that went back)
  buckets, daily meta: 86700000 (24 h + one bucket), longer while a block, a HighLevel reset or
                    the newest bucket (a clock that went back) needs it

ARGV[1] is the operation; ARGV[2..6] are common to all: now ("" in production: Redis TIME; a
decimal ms value in tests, for the vectors' virtual clock), N, W, guard, D (the configured
values; learned ones in the meta override N, W and D).
  admit    want                         admit up to want calls now, one by one (check, record,
                                        check, record...), stopping at the first refusal
  feedback learned_n learned_w learned_d remaining uncertain valid_ms daily_remaining
           daily_reset_in_ms block_burst_ms block_daily_ms
                                        what an upstream answer taught (0 or -1: none)
  state                                 the same reply, nothing changed
  merge    n_daily t...                 calls admitted while Redis was unreachable: each time
                                        joins the list (sorted, newest N kept), n_daily calls
                                        are counted in now's bucket
A bad argument (or a corrupt key) is an error reply, raised before anything is written.

Reply, every operation: an array of integers
   1 granted         admitted by this call (0 but for admit)
   2 scope           of the check that follows: 0 ok, 1 burst, 2 daily, 3 blocked, 4 blocked-day
   3 earliest_in_ms  when the next call could go, from now (0: now)
   4 now             the Redis-clock ms used
   5 N  6 W  7 guard  8 D                     the limits in force
   9 daily_used      admissions counted in the buckets touching the rolling day
  10 blk_burst  11 blk_daily                  429 blocks in force (-1: none)
  12 hl_b_rem   13 hl_b_until                 HighLevel's burst budget in force (-1: none)
  14 hl_d_rem   15 hl_d_until                 HighLevel's daily remaining in force (-1: none)
  16...          the list's entries that still count at now, OLDEST FIRST (at most N)
All times are absolute Redis-clock ms.

Numbers: Redis runs Lua 5.1, whose numbers are doubles, exact for integers up to 2^53. Times,
counts and durations here are integers within +-NEVER (2^53 - 1, about 285,000 years of ms), and
NEVER is what window.c's INT64_MAX is: "never". Larger arguments (an absurd header) are clamped
to it, sums saturate at it; `now` itself must lie within it (Redis TIME always does). Integers
are written to Redis with string.format('%d') and replied as Lua numbers, which Redis turns into
integer replies exactly in that range.
]]

local BUCKET_MS = 300000
local N_BUCKETS = 289 -- buckets touching any rolling 24 h
local DAY_MS = 86400000
local DAILY_TTL_MS = 86700000 -- 24 h + one bucket
local MAX_BURST = 1000000 -- window.h WINDOW_MAX_BURST
local U32_MAX = 4294967295
local NEVER = 9007199254740991 -- 2^53 - 1
local CHUNK = 1000 -- values per variadic command (unpack's stack is limited)

local OK, BURST, DAILY, BLOCKED, BLOCKED_DAY = 0, 1, 2, 3, 4

-- ---------------------------------------------------------------- errors and numbers

-- An error reply. Raised only while loading and checking, before anything is written.
local function bad(msg)
	error({ limiter_error = msg }, 0)
end

-- A decimal integer (optional '-', digits), clamped to [-NEVER, NEVER], and whether it was
-- clamped; nil when the text is not one.
local function parse_int(s)
	if type(s) ~= 'string' or not string.find(s, '^%-?%d+$') then
		return nil
	end
	local v = tonumber(s)
	if v > NEVER then
		return NEVER, true
	elseif v < -NEVER then
		return -NEVER, true
	end
	return v, false
end

local function str(v)
	return string.format('%d', v)
end

-- a + b for b >= 0, saturating at NEVER. Exact below it: both are integers of at most 2^53 - 1.
local function sat_add(a, b)
	local s = a + b
	if s > NEVER then
		return NEVER
	end
	return s
end

-- floor(t / BUCKET_MS), exactly: the quotient of doubles may round up to the next integer
-- for large t, so it is corrected by the remainder (q * BUCKET_MS is even, hence exact).
local function bucket_of(t)
	local q = math.floor(t / BUCKET_MS)
	local r = t - q * BUCKET_MS
	if r < 0 then
		q = q - 1
	elseif r >= BUCKET_MS then
		q = q + 1
	end
	return q
end

-- When bucket idx stops counting: (idx + 289) * BUCKET_MS, the first t whose rolling day no
-- longer touches it. Saturates at NEVER.
local function bucket_end(idx)
	local t = (idx + N_BUCKETS) * BUCKET_MS
	if t > NEVER then
		return NEVER
	end
	return t
end

-- ---------------------------------------------------------------- arguments

local function arg_int(i, name)
	local v = parse_int(ARGV[i])
	if v == nil then
		bad(name .. ' is not an integer')
	end
	return v
end

local function arg_range(i, name, lo, hi)
	local v = parse_int(ARGV[i])
	if v == nil or v < lo or v > hi then
		bad(name .. ' must be an integer in [' .. str(lo) .. ', ' .. str(hi) .. ']')
	end
	return v
end

local function arg_now(i)
	local s = ARGV[i]
	if s == '' then
		local t = redis.call('TIME')
		return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
	end
	local v, clamped = parse_int(s)
	if v == nil or clamped then
		bad('now must be "" or an integer ms within +-(2^53 - 1)')
	end
	return v
end

-- ARGV[2..6]: now, N, W, guard, D.
local function common_args()
	return {
		now = arg_now(2),
		n = arg_range(3, 'N', 0, U32_MAX),
		w = arg_range(4, 'W', 0, U32_MAX),
		guard = arg_range(5, 'guard', 0, U32_MAX),
		d = arg_range(6, 'D', 0, U32_MAX),
	}
end

-- ---------------------------------------------------------------- loading the state

-- A stored integer, nil when absent (HMGET gives false). Anything else is a corrupt key.
local function stored(v, key, what)
	if v == false or v == nil then
		return nil
	end
	local n = parse_int(v)
	if n == nil then
		bad('corrupt ' .. what .. ' in ' .. key)
	end
	return n
end

-- N as used: 0 is taken as 1, capped at MAX_BURST (window.c's clamp_burst).
local function clamp_burst(n)
	if n < 1 then
		return 1
	end
	return math.min(n, MAX_BURST)
end

--[[
Burst state, in memory for this call: the stored list (newest first) plus `pushed` admissions
of this call at tpush, newer than all of it. `orig` is what the meta held, to write only changes.
]]
local function burst_load(cfg)
	local m = redis.call('HMGET', KEYS[2], 'n', 'w', 'blk', 'hlr', 'hlu')
	local orig = {
		n = stored(m[1], KEYS[2], 'burst n'),
		w = stored(m[2], KEYS[2], 'burst w'),
		blk = stored(m[3], KEYS[2], 'burst blk'),
		hlr = stored(m[4], KEYS[2], 'burst hlr'),
		hlu = stored(m[5], KEYS[2], 'burst hlu'),
	}
	local b = {
		orig = orig,
		learned_n = orig.n,
		learned_w = orig.w,
		guard = cfg.guard,
		blk = orig.blk,
		hlr = orig.hlr,
		hlu = orig.hlu,
		ring = {},
		pushed = 0,
		tpush = nil,
		list_changed = false, -- pushed, trimmed or rewritten
		rewrite = false, -- merge: the list is replaced by ring
	}
	if b.learned_n then
		b.learned_n = clamp_burst(b.learned_n)
	end
	if b.learned_w then
		b.learned_w = math.max(0, math.min(b.learned_w, U32_MAX))
	end
	b.n = b.learned_n or clamp_burst(cfg.n)
	b.w = b.learned_w or cfg.w
	if b.hlr == nil or b.hlu == nil or b.hlr < 0 then
		b.hlr, b.hlu = nil, nil
	end
	-- The entries are this script's own '%d' writes. Checked inline, with tonumber and an
	-- integer test: parse_int's pattern, called per entry, was a third of a call's time with
	-- the 100 entries of an active key (bench/results/perf.txt, case c). A foreign writer's
	-- garbage is still refused; only its ' 12' or '0x1f' would now be taken as numbers.
	for i, v in ipairs(redis.call('LRANGE', KEYS[1], 0, b.n - 1)) do
		local t = tonumber(v)
		if t == nil or t % 1 ~= 0 then
			bad('corrupt list entry in ' .. KEYS[1])
		end
		if t > NEVER then
			t = NEVER
		elseif t < -NEVER then
			t = -NEVER
		end
		b.ring[i] = t
	end
	return b
end

-- Entries held at this point of the call, newest first, and the i-th newest (1-based).
local function ring_len(b)
	return math.min(b.pushed + #b.ring, b.n)
end

local function ring_entry(b, i)
	if i <= b.pushed then
		return b.tpush
	end
	return b.ring[i - b.pushed]
end

local function burst_span(b)
	return b.w + b.guard
end

-- How many of the newest entries still count at now (window.c's burst_first_counting): an
-- entry at t counts while t > now - (W + guard). The list is sorted, newest first, so they are
-- a prefix; the rest can never count again (now only grows) and are neither kept nor replied.
local function burst_counting(b, now)
	local k, oldest_counting = ring_len(b), now - burst_span(b)
	while k > 0 and ring_entry(b, k) <= oldest_counting do
		k = k - 1
	end
	return k
end

-- HMGET of the bucket fields lo..hi (at most N_BUCKETS of them): idx -> count.
local function bucket_counts(lo, hi)
	local counts = {}
	local idx = lo
	while idx <= hi do
		local last = math.min(hi, idx + CHUNK - 1)
		local fields = {}
		for i = idx, last do
			fields[#fields + 1] = str(i)
		end
		local got = redis.call('HMGET', KEYS[3], unpack(fields))
		for i = idx, last do
			counts[i] = stored(got[i - idx + 1], KEYS[3], 'bucket') or 0
		end
		idx = last + 1
	end
	return counts
end

--[[
Daily state, in memory for this call. Buckets that stopped counting at now (idx < first) are
taken out of the total here and listed in `expired` (deleted on a write): from lo upward, and
never more than N_BUCKETS of them, since every bucket held lies in [hi - 288, hi] (a record goes
to now's bucket, or to hi when the clock went back, after the older ones were dropped).
]]
local function daily_load(cfg, now)
	local m = redis.call('HMGET', KEYS[4], 'd', 'blk', 'hlr', 'hlu')
	local orig = {
		d = stored(m[1], KEYS[4], 'daily d'),
		blk = stored(m[2], KEYS[4], 'daily blk'),
		hlr = stored(m[3], KEYS[4], 'daily hlr'),
		hlu = stored(m[4], KEYS[4], 'daily hlu'),
	}
	local now_idx = bucket_of(now)
	-- with now's bucket, which an admission adds to (one HSET then writes it and tot/lo/hi)
	local h = redis.call('HMGET', KEYS[3], 'tot', 'lo', 'hi', str(now_idx))
	local d = {
		orig = orig,
		learned_d = orig.d,
		blk = orig.blk,
		hlr = orig.hlr,
		hlu = orig.hlu,
		tot = stored(h[1], KEYS[3], 'tot'),
		lo = stored(h[2], KEYS[3], 'lo'),
		hi = stored(h[3], KEYS[3], 'hi'),
		now_idx = now_idx,
		now_count = stored(h[4], KEYS[3], 'bucket') or 0,
		expired = {},
		clear = false, -- every bucket stopped counting: delete the hash
		add = 0, -- admissions of this call, all in bucket add_idx
		add_idx = nil,
		counts = nil, -- bucket_counts() of the counted buckets, loaded when the daily is full
		changed = false,
	}
	d.hi_loaded = d.hi
	d.first = d.now_idx - (N_BUCKETS - 1)
	if d.learned_d then
		d.learned_d = math.max(0, math.min(d.learned_d, U32_MAX))
	end
	d.max = d.learned_d or cfg.d
	if d.max < 1 then
		d.max = 1 -- 0 counts as 1: a window that admits nothing is not a state
	end
	if d.hlr == nil or d.hlu == nil or d.hlr < 0 then
		d.hlr, d.hlu = nil, nil
	end
	local had = h[1] or h[2] or h[3]
	if d.tot == nil or d.lo == nil or d.hi == nil or d.hi < d.first then
		-- empty, or nothing in it counts any more
		d.clear = had and true or false
		d.tot, d.lo, d.hi = 0, nil, nil
		return d
	end
	local from = math.max(d.lo, d.hi - (N_BUCKETS - 1))
	if from < d.first then
		local counts = bucket_counts(from, d.first - 1)
		for idx = from, d.first - 1 do
			if counts[idx] > 0 then
				d.tot = d.tot - counts[idx]
				d.expired[#d.expired + 1] = str(idx)
			end
		end
		d.lo = d.first
		d.changed = true
	end
	if d.tot <= 0 then
		d.clear, d.tot, d.lo, d.hi = true, 0, nil, nil
	end
	return d
end

-- ---------------------------------------------------------------- burst

--[[
THE BURST GUARANTEE: at most N admissions in any interval of length W + guard.
The list holds the newest (up to) N admission times in order. One more may go at t iff fewer
than N are held, or the N-th newest, o, is at least W + guard old (t - o >= W + guard). So
admissions N apart are at least W + guard apart, and no interval of that length holds N + 1.
The earliest time for one more is exactly o + W + guard (window.c's burst_window_earliest).
]]
local function burst_ring_earliest(b, now)
	if ring_len(b) < b.n then
		return now
	end
	return sat_add(ring_entry(b, b.n), burst_span(b))
end

-- HighLevel's burst budget holds while now < hlu; at 0 the key waits for hlu.
local function burst_hl_in_force(b, now)
	return b.hlr ~= nil and now < b.hlu
end

local function burst_hl_earliest(b, now)
	if burst_hl_in_force(b, now) and b.hlr == 0 then
		return b.hlu
	end
	return now
end

-- One admission at now: the list takes max(now, newest) (a clock that went back: later is the
-- safe side, and the list stays sorted), and HighLevel's budget, while in force, pays one.
local function burst_record(b, now)
	local t = now
	if b.pushed + #b.ring > 0 and ring_entry(b, 1) > t then
		t = ring_entry(b, 1)
	end
	b.tpush = t
	b.pushed = b.pushed + 1
	b.list_changed = true
	if burst_hl_in_force(b, now) and b.hlr > 0 then
		b.hlr = b.hlr - 1
	end
end

-- ---------------------------------------------------------------- daily

local function daily_hl_in_force(d, now)
	return d.hlr ~= nil and now < d.hlu
end

--[[
THE DAILY GUARANTEE: at most D admissions in any rolling 24 h.
d.tot counts every bucket touching (now - 24 h, now] in full, so it is never less than the
admissions in that rolling day. One more is admitted only while tot <= D - 1, so right after it
no rolling day holds more than D. When full, the earliest time is when enough of the oldest
counted buckets have stopped counting (bucket idx at (idx + 289) * 300000) to bring the count
to D - 1 (window.c's daily_count_earliest).
]]
local function daily_count_earliest(d, now)
	if d.tot < d.max then
		return now
	end
	local excess = d.tot - d.max + 1
	-- no bucket lies below hi - 288 (see daily_load): at most N_BUCKETS fields, whatever the clock
	local from = math.max(d.first, d.lo, d.hi - (N_BUCKETS - 1))
	if d.counts == nil or d.counts_from ~= from or d.counts_hi ~= d.hi then
		d.counts, d.counts_from, d.counts_hi = bucket_counts(from, d.hi), from, d.hi
	end
	local freed = 0
	for idx = from, d.hi do
		freed = freed + d.counts[idx]
		if idx == d.add_idx then
			freed = freed + d.add
		end
		if freed >= excess then
			return bucket_end(idx)
		end
	end
	return NEVER -- unreachable: the counted buckets sum to tot
end

-- The later of the count and HighLevel's remaining: at 0 the key waits for its reset.
local function daily_earliest(d, now)
	local t = daily_count_earliest(d, now)
	if daily_hl_in_force(d, now) and d.hlr == 0 and d.hlu > t then
		t = d.hlu
	end
	return t
end

-- Spend HighLevel's daily remaining, or forget it once its reset has passed.
local function daily_spend_hl(d, now, count)
	if d.hlr == nil then
		return
	end
	if not daily_hl_in_force(d, now) then
		d.hlr, d.hlu = nil, nil
		return
	end
	d.hlr = math.max(0, d.hlr - count)
end

-- count admissions at now: in now's bucket, or in the newest one when the clock went back
-- (later is the safe side), spending HighLevel's remaining.
local function daily_record(d, now, count)
	if count == 0 then
		return
	end
	local idx = d.now_idx
	if d.hi ~= nil and d.hi > idx then
		idx = d.hi
	end
	d.add_idx = idx
	d.add = d.add + count
	d.tot = d.tot + count
	d.hi = math.max(d.hi or idx, idx)
	d.lo = d.lo or idx
	d.changed = true
	daily_spend_hl(d, now, count)
end

-- ---------------------------------------------------------------- both

--[[
Keep the reason that holds the call back longest. Candidates come in increasing order of
precedence, so on a tie the later one names it: blocked-day > daily > blocked > burst
(window.c's verdict_consider and window_check).
]]
local function consider(scope, t, cand_scope, cand_t)
	if cand_t > t or (scope ~= OK and cand_t == t) then
		return cand_scope, cand_t
	end
	return scope, t
end

-- The verdict at now: scope and earliest time.
local function check(b, d, now)
	local scope, t = consider(OK, now, BURST, burst_ring_earliest(b, now))
	scope, t = consider(scope, t, BURST, burst_hl_earliest(b, now))
	if b.blk ~= nil then
		scope, t = consider(scope, t, BLOCKED, b.blk)
	end
	scope, t = consider(scope, t, DAILY, daily_earliest(d, now))
	if d.blk ~= nil then
		scope, t = consider(scope, t, BLOCKED_DAY, d.blk)
	end
	return scope, t
end

-- ---------------------------------------------------------------- writing back

-- A meta hash brought to `want` (field -> integer or nil), writing only what differs from
-- `orig` (field -> the stored integer or nil). Values are formatted only when written.
local function sync_hash(key, orig, want, fields)
	local set, del
	for _, f in ipairs(fields) do
		local v = want[f]
		if v ~= nil and orig[f] ~= v then
			set = set or {}
			set[#set + 1] = f
			set[#set + 1] = str(v)
		elseif v == nil and orig[f] ~= nil then
			del = del or {}
			del[#del + 1] = f
		end
	end
	if set then
		redis.call('HSET', key, unpack(set))
	end
	if del then
		redis.call('HDEL', key, unpack(del))
	end
	return set ~= nil or del ~= nil
end

-- Variadic command over many values, in chunks.
local function call_chunked(cmd, key, values)
	for i = 1, #values, CHUNK do
		redis.call(cmd, key, unpack(values, i, math.min(#values, i + CHUNK - 1)))
	end
end

local function persist_burst(b, now, counting)
	local written = false
	-- The list keeps the entries that still count (at most N): an active key's list holds its
	-- last window, not its last N calls, and every call reads and replies only those.
	if b.rewrite then
		redis.call('DEL', KEYS[1])
		local keep = {}
		for i = 1, math.min(#b.ring, b.n, counting) do
			keep[i] = str(b.ring[i])
		end
		call_chunked('RPUSH', KEYS[1], keep)
		written = true
	elseif b.list_changed then
		local add = {}
		for i = 1, math.min(b.pushed, b.n) do
			add[i] = str(b.tpush)
		end
		call_chunked('LPUSH', KEYS[1], add)
		local keep = math.min(b.n, counting)
		if keep > 0 then
			redis.call('LTRIM', KEYS[1], 0, keep - 1)
		else -- nothing counts (W + guard = 0): LTRIM 0 -1 would keep it all
			redis.call('DEL', KEYS[1])
		end
		written = true
	end
	-- What no longer holds is forgotten (window.c's burst_trim): an ended block or budget.
	local in_force = burst_hl_in_force(b, now)
	local want = {
		n = b.learned_n,
		w = b.learned_w,
		blk = (b.blk ~= nil and b.blk > now) and b.blk or nil,
		hlr = in_force and b.hlr or nil,
		hlu = in_force and b.hlu or nil,
	}
	if sync_hash(KEYS[2], b.orig, want, { 'n', 'w', 'blk', 'hlr', 'hlu' }) then
		written = true
	end
	return written
end

local function persist_daily(d, now)
	local written = false
	if d.clear then
		redis.call('DEL', KEYS[3])
		written = true
	elseif #d.expired > 0 then
		call_chunked('HDEL', KEYS[3], d.expired)
		written = true
	end
	if d.add > 0 and d.add_idx == d.now_idx then
		-- the usual case, now's bucket: its count was loaded (none after a DEL), one write
		local count = (d.clear and 0 or d.now_count) + d.add
		redis.call('HSET', KEYS[3], str(d.add_idx), str(count), 'tot', str(d.tot), 'lo',
			str(d.lo), 'hi', str(d.hi))
		written = true
	elseif d.changed and d.hi ~= nil then
		if d.add > 0 then -- the newest bucket, ahead of now's (a clock that went back)
			redis.call('HINCRBY', KEYS[3], str(d.add_idx), d.add)
		end
		redis.call('HSET', KEYS[3], 'tot', str(d.tot), 'lo', str(d.lo), 'hi', str(d.hi))
		written = true
	end
	local in_force = daily_hl_in_force(d, now)
	local want = {
		d = d.learned_d,
		blk = (d.blk ~= nil and d.blk > now) and d.blk or nil,
		hlr = in_force and d.hlr or nil,
		hlu = in_force and d.hlu or nil,
	}
	if sync_hash(KEYS[4], d.orig, want, { 'd', 'blk', 'hlr', 'hlu' }) then
		written = true
	end
	return written
end

-- Until t has passed, in ms from now (0 when it has, or is absent).
local function ms_until(t, now)
	if t == nil or t <= now then
		return 0
	end
	return t - now
end

--[[
TTLs: every key outlives what it holds, and an idle key disappears by itself. The burst pair
needs (W + guard) * 2 + 1000 from its newest entry, the daily pair a day and a bucket from its
newest bucket (bucket_end(hi)); both more while a block or budget ends later, or while the newest
entry or bucket is ahead of now (a clock that went back).

A feedback or merge that writes sets all four. An admission, the hot path, sets them only when
it holds something the last TTLs may not cover (they were 4 of its 13 commands):
  the burst pair, when its entry is the first of its epoch, floor(t / S) for S = W + guard (or
    the list was empty). That first entry, at t >= e * S, set an expiry of at least
    e * S + 2 * S + 1000, and every entry of epoch e (t < (e + 1) * S) stops counting at t + S,
    before it. Feedback, which alone changes W, sets the TTLs itself.
  the daily pair, when the newest bucket changes (or the hash was empty). The first write into
    bucket hi set an expiry of at least bucket_end(hi), when the last of it stops counting;
    later admissions in hi add nothing beyond it.
An admission writes the meta only to spend a budget or forget what ended: nothing to extend.
]]
local function set_ttls(b, d, now, burst_pair, daily_pair)
	if burst_pair then
		local newest = (b.pushed + #b.ring > 0) and ring_entry(b, 1) or nil
		local ttl = burst_span(b) * 2 + 1000 + ms_until(newest, now)
		ttl = str(math.min(math.max(ttl, ms_until(b.blk, now), ms_until(b.hlu, now)), NEVER))
		redis.call('PEXPIRE', KEYS[1], ttl)
		redis.call('PEXPIRE', KEYS[2], ttl)
	end
	if daily_pair then
		local ttl = DAILY_TTL_MS
		if d.hi ~= nil then
			ttl = math.max(ttl, ms_until(bucket_end(d.hi), now))
		end
		ttl = str(math.min(math.max(ttl, ms_until(d.blk, now), ms_until(d.hlu, now)), NEVER))
		redis.call('PEXPIRE', KEYS[3], ttl)
		redis.call('PEXPIRE', KEYS[4], ttl)
	end
end

-- Whether this call's admissions are the first of their epoch (see set_ttls).
local function burst_new_epoch(b)
	local prev, span = b.ring[1], burst_span(b)
	if b.pushed == 0 then
		return false
	end
	if prev == nil or span <= 0 then
		return true
	end
	return math.floor(b.tpush / span) ~= math.floor(prev / span)
end

-- `admission`: only admissions were recorded (op admit); otherwise every write sets all TTLs.
local function persist(b, d, now, counting, admission)
	local wb = persist_burst(b, now, counting)
	local wd = persist_daily(d, now)
	if admission then
		set_ttls(b, d, now, burst_new_epoch(b), d.add > 0 and d.hi ~= d.hi_loaded)
	elseif wb or wd then
		set_ttls(b, d, now, true, true)
	end
end

-- ---------------------------------------------------------------- the reply

-- `counting`: burst_counting(b, now).
local function reply(granted, b, d, now, counting)
	local scope, earliest = check(b, d, now)
	local b_in, d_in = burst_hl_in_force(b, now), daily_hl_in_force(d, now)
	local out = {
		granted,
		scope,
		earliest - now,
		now,
		b.n,
		b.w,
		b.guard,
		d.max,
		d.tot,
		(b.blk ~= nil and b.blk > now) and b.blk or -1,
		(d.blk ~= nil and d.blk > now) and d.blk or -1,
		b_in and b.hlr or -1,
		b_in and b.hlu or -1,
		d_in and d.hlr or -1,
		d_in and d.hlu or -1,
	}
	local k, pushed, ring = #out, b.pushed, b.ring
	for i = counting, 1, -1 do -- oldest first; ring_entry(b, i), inline
		k = k + 1
		if i <= pushed then
			out[k] = b.tpush
		else
			out[k] = ring[i - pushed]
		end
	end
	return out
end

-- The reply is built from the state in memory before it is written, so that no read (the
-- bucket counts of the walk) ever sees this call's own writes and counts them twice.
local function reply_then_persist(granted, b, d, now, admission)
	local counting = burst_counting(b, now)
	local out = reply(granted, b, d, now, counting)
	persist(b, d, now, counting, admission)
	return out
end

-- ---------------------------------------------------------------- operations

local function nargs(n, op)
	if #ARGV ~= n then
		bad(op .. ' takes ' .. n .. ' arguments, got ' .. #ARGV)
	end
end

-- Admit up to want calls now, one by one; stop at the first refusal.
local function op_admit()
	nargs(7, 'admit')
	local cfg = common_args()
	local want = arg_range(7, 'want', 0, MAX_BURST)
	local now = cfg.now
	local b, d = burst_load(cfg), daily_load(cfg, now)
	local granted = 0
	while granted < want and check(b, d, now) == OK do
		burst_record(b, now)
		daily_record(d, now, 1)
		granted = granted + 1
	end
	return reply_then_persist(granted, b, d, now, true)
end

--[[
What an upstream answer taught. Learned limits (a smaller N keeps the newest N); HighLevel's
budgets REPLACE what an earlier answer said (each answer's remaining already counts all that
HighLevel saw; the calls still in flight, `uncertain`, are the only ones it may not have);
429 blocks keep the later of the old and the new.
]]
local function op_feedback()
	nargs(16, 'feedback')
	local cfg = common_args()
	local now = cfg.now
	local learned_n = arg_range(7, 'learned_n', 0, U32_MAX)
	local learned_w = arg_range(8, 'learned_w', 0, U32_MAX)
	local learned_d = arg_range(9, 'learned_d', 0, U32_MAX)
	local remaining = arg_int(10, 'remaining')
	local uncertain = arg_range(11, 'uncertain', 0, U32_MAX)
	local valid_ms = arg_int(12, 'valid_ms')
	local daily_remaining = arg_int(13, 'daily_remaining')
	local daily_reset_in_ms = arg_int(14, 'daily_reset_in_ms')
	local block_burst_ms = arg_int(15, 'block_burst_ms')
	local block_daily_ms = arg_int(16, 'block_daily_ms')
	local b, d = burst_load(cfg), daily_load(cfg, now)

	if learned_n > 0 then
		b.learned_n = clamp_burst(learned_n)
		if #b.ring > b.learned_n then
			b.list_changed = true -- LTRIM keeps the newest N
		end
		b.n = b.learned_n
	end
	if learned_w > 0 then
		b.learned_w, b.w = learned_w, learned_w
	end
	if learned_d > 0 then
		d.learned_d, d.max = learned_d, learned_d
	end
	if remaining >= 0 then
		-- valid_ms <= 0: never in force, and what an earlier answer said is replaced all the same
		b.hlr = math.max(0, remaining - uncertain)
		b.hlu = sat_add(now, math.max(valid_ms, 0))
	end
	if daily_remaining >= 0 then
		d.hlr = math.max(0, daily_remaining - uncertain)
		if daily_reset_in_ms >= 0 then
			d.hlu = sat_add(now, daily_reset_in_ms)
		else
			d.hlu = sat_add(now, DAY_MS) -- no reset named: held for a day
		end
	end
	if block_burst_ms > 0 then
		b.blk = math.max(b.blk or -NEVER, sat_add(now, block_burst_ms))
	end
	if block_daily_ms > 0 then
		d.blk = math.max(d.blk or -NEVER, sat_add(now, block_daily_ms))
	end
	return reply_then_persist(0, b, d, now)
end

local function op_state()
	nargs(6, 'state')
	local cfg = common_args()
	local b = burst_load(cfg)
	return reply(0, b, daily_load(cfg, cfg.now), cfg.now, burst_counting(b, cfg.now))
end

--[[
Calls admitted by one proxy while Redis was unreachable, now back: their times (Redis clock)
join the list, which stays sorted newest first and keeps the newest N (the union only ever holds
back more), and n_daily calls are counted in now's bucket. Both spend HighLevel's budgets in
force, as any admission does.
]]
local function op_merge()
	if #ARGV < 7 then
		bad('merge takes at least 7 arguments, got ' .. #ARGV)
	end
	local cfg = common_args()
	local now = cfg.now
	local n_daily = arg_range(7, 'n_daily', 0, U32_MAX)
	local times = {}
	for i = 8, #ARGV do
		times[#times + 1] = arg_int(i, 'time')
	end
	local b, d = burst_load(cfg), daily_load(cfg, now)

	local n_merged = #times
	if n_merged > 0 then
		for _, t in ipairs(b.ring) do
			times[#times + 1] = t
		end
		table.sort(times, function(x, y)
			return x > y
		end)
		b.ring = {}
		for i = 1, math.min(#times, b.n) do
			b.ring[i] = times[i]
		end
		b.rewrite = true
		if burst_hl_in_force(b, now) then
			b.hlr = math.max(0, b.hlr - n_merged)
		end
	end
	daily_record(d, now, n_daily)
	return reply_then_persist(0, b, d, now)
end

local OPS = { admit = op_admit, feedback = op_feedback, state = op_state, merge = op_merge }

local function main()
	if #KEYS ~= 4 then
		bad('4 keys expected (list, burst meta, daily buckets, daily meta), got ' .. #KEYS)
	end
	local op = OPS[ARGV[1]]
	if op == nil then
		bad('unknown operation (admit, feedback, state, merge)')
	end
	return op()
end

local ok, res = pcall(main)
if ok then
	return res
end
if type(res) == 'table' and res.limiter_error then
	return redis.error_reply('ERR limiter.lua: ' .. res.limiter_error)
end
error(res, 0)
