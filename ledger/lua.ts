// The ledger's Lua scripts. Each runs atomically inside Redis; times come from Redis TIME only.
// Common calling convention: KEYS = {index, expiring, workers, prefill} of one fleet and ARGV[1] = the fleet's key
// prefix `kvfleet:{NS/F}:`; per-worker keys are built from the prefix, so every key a script touches carries the
// fleet's hash tag and lives in one Cluster slot.
//
// Invariants the scripts keep (memory.ts mirrors them):
//  - index score of a worker = free_pages − Σ reserved:<id> (effective free), for every indexed worker;
//    only live, non-draining workers are indexed, except stale ones not yet met (a pick that meets one drops it).
//  - every reservation is in three places: reserved:<id> (pages), reservations:<id> and expiring (expiry ms);
//    a reservation is expired when its expiry <= now, and every script that reads capacity first drops expired
//    reservations (each once, O(log N); up to EXPIRE_BATCH per call), so index scores do not count them.
//  - a pick reserves only when effective free >= need, so Σ reserved <= free_pages as of the last heartbeat.
//  - prefill holds the same members as index (added, dropped and recomputed together), scored by prefill load =
//    the worker's last prefill_tokens + Σ tokens:<id>; a reservation's tokens come and go with its pages.

/** Expired reservations dropped per script call at most (memory.ts uses the same bound and order). */
export const EXPIRE_BATCH = 256;

/** Workers least-prefill looks at per pick: the lowest prefill loads, so a pick stays O(LEAST_PREFILL_SCAN · log N). */
export const LEAST_PREFILL_SCAN = 16;

const PRELUDE = `
local PREFIX = ARGV[1]
local K_INDEX, K_EXP, K_WORKERS, K_PREFILL = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local function k_worker(id) return PREFIX .. 'worker:' .. id end
local function k_resv(id) return PREFIX .. 'reservations:' .. id end
local function k_reserved(id) return PREFIX .. 'reserved:' .. id end
local function k_tokens(id) return PREFIX .. 'tokens:' .. id end

-- A worker leaves the pick index and the prefill index together.
local function unindex(id)
  redis.call('ZREM', K_INDEX, id)
  redis.call('ZREM', K_PREFILL, id)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Drops one reservation; its pages go back to the worker's index score and its prompt tokens leave the worker's
-- prefill load, where the worker is indexed.
local function drop_reservation(id, rid)
  redis.call('ZREM', K_EXP, id .. '\\n' .. rid)
  redis.call('ZREM', k_resv(id), rid)
  local tokens = redis.call('HGET', k_tokens(id), rid)
  if tokens then
    redis.call('HDEL', k_tokens(id), rid)
    if redis.call('ZSCORE', K_PREFILL, id) then redis.call('ZINCRBY', K_PREFILL, -tonumber(tokens), id) end
  end
  local pages = redis.call('HGET', k_reserved(id), rid)
  if not pages then return 0 end
  pages = tonumber(pages)
  redis.call('HDEL', k_reserved(id), rid)
  if redis.call('ZSCORE', K_INDEX, id) then redis.call('ZINCRBY', K_INDEX, pages, id) end
  return pages
end

-- At most EXPIRE_BATCH per call, oldest first, so a mass expiry (routers gone) never stalls Redis; reservations
-- left for the next call only make capacity look smaller than it is, never larger.
local function expire_due(now)
  local due = redis.call('ZRANGEBYSCORE', K_EXP, '-inf', now, 'LIMIT', 0, ${EXPIRE_BATCH})
  for _, m in ipairs(due) do
    local sep = string.find(m, '\\n', 1, true)
    drop_reservation(string.sub(m, 1, sep - 1), string.sub(m, sep + 1))
  end
end

-- A worker is live while its hash exists and its last heartbeat is within its TTL. Returns its addr when it is
-- live and not draining; otherwise drops it from the index (a heartbeat puts it back) and returns nil.
local function pickable_addr(id, now)
  local h = redis.call('HMGET', k_worker(id), 'addr', 'heartbeat_ms', 'ttl_ms', 'draining')
  if not h[1] then
    unindex(id)
    redis.call('SREM', K_WORKERS, id)
    return nil
  end
  local hb, ttl = tonumber(h[2]), tonumber(h[3])
  if (not hb) or (not ttl) or now - hb > ttl or h[4] == '1' then
    unindex(id)
    return nil
  end
  return h[1]
end
`;

/** pick: ARGV = prefix, need_pages, request_id, ttl_ms, policy, random seed, prompt tokens, excluded worker ids….
 *  Returns {id, addr, effective_free_after} or nil. Excluded workers (those a request already failed on) are taken
 *  out of both indexes for the choice and put back with their scores before the script returns, so every policy
 *  chooses among the others exactly as if the excluded ones were absent, and nothing else about them changes. */
export const PICK = PRELUDE + `
local need, rid, ttl, policy = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), ARGV[5]
local tokens = tonumber(ARGV[7]) or 0
local now = now_ms()
expire_due(now)

local excluded = {}
for j = 8, #ARGV do
  local id = ARGV[j]
  local free = redis.call('ZSCORE', K_INDEX, id)
  if free then
    excluded[#excluded + 1] = {id, free, redis.call('ZSCORE', K_PREFILL, id)}
    unindex(id)
  end
end

local function reserve(id, addr)
  -- the same request id picked again on this worker replaces its old reservation (never counted twice)
  if redis.call('HEXISTS', k_reserved(id), rid) == 1 then drop_reservation(id, rid) end
  local exp = now + ttl
  redis.call('HSET', k_reserved(id), rid, need)
  redis.call('ZADD', k_resv(id), exp, rid)
  redis.call('ZADD', K_EXP, exp, id .. '\\n' .. rid)
  if tokens > 0 then
    redis.call('HSET', k_tokens(id), rid, tokens)
    if redis.call('ZSCORE', K_PREFILL, id) then redis.call('ZINCRBY', K_PREFILL, tokens, id) end
  end
  local after = redis.call('ZINCRBY', K_INDEX, -need, id)
  return {id, addr, tonumber(after)}
end

local function most_free()
  local top = redis.call('ZREVRANGE', K_INDEX, 0, 0, 'WITHSCORES')
  if #top == 0 or tonumber(top[2]) < need then return nil end
  return top[1]
end

local function choose()
  -- Each loop either returns or removes one index entry, so it ends.
  if policy == 'best-fit' then
    while true do
      local r = redis.call('ZRANGEBYSCORE', K_INDEX, need, '+inf', 'LIMIT', 0, 1)
      if #r == 0 then return false end
      local addr = pickable_addr(r[1], now)
      if addr then return reserve(r[1], addr) end
    end
  elseif policy == 'p2c' then
    math.randomseed(tonumber(ARGV[6]))
    while true do
      local total = redis.call('ZCARD', K_INDEX)
      local fit = redis.call('ZCOUNT', K_INDEX, need, '+inf')
      if fit == 0 then return false end
      -- the fitting workers are the top 'fit' ranks; draw two distinct ones
      local base = total - fit
      local a = base + math.random(fit) - 1
      local b = a
      if fit > 1 then
        b = base + math.random(fit - 1) - 1
        if b >= a then b = b + 1 end
      end
      local ea = redis.call('ZRANGE', K_INDEX, a, a, 'WITHSCORES')
      local eb = redis.call('ZRANGE', K_INDEX, b, b, 'WITHSCORES')
      local addr_a = pickable_addr(ea[1], now)
      local addr_b = addr_a
      if b ~= a then addr_b = pickable_addr(eb[1], now) end
      if addr_a and addr_b then
        if tonumber(eb[2]) > tonumber(ea[2]) then return reserve(eb[1], addr_b) end
        return reserve(ea[1], addr_a)
      end
    end
  elseif policy == 'least-prefill' then
    while true do
      -- the lowest prefill loads (score, then member bytes); of those that fit: the least load, then the most free
      local cand = redis.call('ZRANGE', K_PREFILL, 0, ${LEAST_PREFILL_SCAN - 1}, 'WITHSCORES')
      local best, best_load, best_free
      for j = 1, #cand, 2 do
        local free = redis.call('ZSCORE', K_INDEX, cand[j])
        if free then
          local load = tonumber(cand[j + 1])
          free = tonumber(free)
          if free >= need and ((not best) or load < best_load or (load == best_load and free > best_free)) then
            best, best_load, best_free = cand[j], load, free
          end
        end
      end
      -- none of them fits: the largest effective free, as most-free
      if not best then best = most_free() end
      if not best then return false end
      local addr = pickable_addr(best, now)
      if addr then return reserve(best, addr) end
    end
  else
    while true do
      local id = most_free()
      if not id then return false end
      local addr = pickable_addr(id, now)
      if addr then return reserve(id, addr) end
    end
  end
  return false
end

local picked = choose()
for _, e in ipairs(excluded) do
  redis.call('ZADD', K_INDEX, e[2], e[1])
  if e[3] then redis.call('ZADD', K_PREFILL, e[3], e[1]) end
end
return picked
`;

/** heartbeat: ARGV = prefix, id, ttl_ms, reservation_ttl_ms, nfields, (field, value)×nfields, nremoved,
 *  removed request ids…, queued request ids…. Returns {effective_free, reserved_pages, now_ms}. */
export const HEARTBEAT = PRELUDE + `
local id, ttl, rttl, nf = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
expire_due(now)
local wk, kr = k_worker(id), k_reserved(id)
local args = {}
local i = 6
for _ = 1, nf do
  args[#args + 1] = ARGV[i]; args[#args + 1] = ARGV[i + 1]
  i = i + 2
end
args[#args + 1] = 'heartbeat_ms'; args[#args + 1] = now
args[#args + 1] = 'ttl_ms'; args[#args + 1] = ttl
redis.call('HSET', wk, unpack(args))
redis.call('PEXPIRE', wk, ttl)
redis.call('SADD', K_WORKERS, id)
-- admitted (their pages are now inside free_pages) and rejected requests: reservations dropped
local nr = tonumber(ARGV[i]); i = i + 1
for _ = 1, nr do drop_reservation(id, ARGV[i]); i = i + 1 end
-- queued requests: reservations still present live on (extended, never shortened)
local rexp = now + rttl
while i <= #ARGV do
  local rid = ARGV[i]
  if redis.call('HEXISTS', kr, rid) == 1 then
    redis.call('ZADD', k_resv(id), 'GT', rexp, rid)
    redis.call('ZADD', K_EXP, 'GT', rexp, id .. '\\n' .. rid)
  end
  i = i + 1
end
-- the index and prefill scores are recomputed from scratch here, so any drift is healed every heartbeat
local sum = 0
for _, v in ipairs(redis.call('HVALS', kr)) do sum = sum + tonumber(v) end
local eff = tonumber(redis.call('HGET', wk, 'free_pages')) - sum
local load = tonumber(redis.call('HGET', wk, 'prefill_tokens')) or 0
for _, v in ipairs(redis.call('HVALS', k_tokens(id))) do load = load + tonumber(v) end
if redis.call('HGET', wk, 'draining') == '1' then
  unindex(id)
else
  redis.call('ZADD', K_INDEX, eff, id)
  redis.call('ZADD', K_PREFILL, load, id)
end
return {eff, sum, now}
`;

/** release: ARGV = prefix, id, request_id. Returns the pages released (0 when none). */
export const RELEASE = PRELUDE + `
return drop_reservation(ARGV[2], ARGV[3])
`;

/** remove_worker: ARGV = prefix, id. */
export const REMOVE_WORKER = PRELUDE + `
redis.call('DEL', k_worker(ARGV[2]))
redis.call('SREM', K_WORKERS, ARGV[2])
unindex(ARGV[2])
return 1
`;

/** snapshot: ARGV = prefix. Returns {now, {id, {field, value, …}, reserved_pages, reservations}, …} for every live
 *  worker; forgets workers whose hash is gone. */
export const SNAPSHOT = PRELUDE + `
local now = now_ms()
expire_due(now)
local out = {now}
for _, id in ipairs(redis.call('SMEMBERS', K_WORKERS)) do
  local h = redis.call('HGETALL', k_worker(id))
  if #h == 0 then
    redis.call('SREM', K_WORKERS, id)
    unindex(id)
  else
    local hb, ttl
    for j = 1, #h, 2 do
      if h[j] == 'heartbeat_ms' then hb = tonumber(h[j + 1]) elseif h[j] == 'ttl_ms' then ttl = tonumber(h[j + 1]) end
    end
    if hb and ttl and now - hb <= ttl then
      local vals = redis.call('HVALS', k_reserved(id))
      local sum = 0
      for _, v in ipairs(vals) do sum = sum + tonumber(v) end
      out[#out + 1] = {id, h, sum, #vals}
    else
      unindex(id)
    end
  end
end
return out
`;

/** routers: KEYS = {routers}; ARGV = op ('register' | 'unregister' | 'count'), router id, ttl_ms.
 *  A router is live while now − last_seen <= ttl_ms. Returns the number of live routers. */
export const ROUTERS = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op, rid, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
if op == 'register' then redis.call('ZADD', KEYS[1], now, rid)
elseif op == 'unregister' then redis.call('ZREM', KEYS[1], rid) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - ttl))
return redis.call('ZCARD', KEYS[1])
`;
