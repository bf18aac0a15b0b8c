-- Group commit of one SKU's batch of reservations. Redis decides every sale here.
--
-- KEYS (every key the script touches, all of one SKU's hash tag, core/keys.py):
--       1 meta (hash), 2 stock, 3 sold, 4 buyers (hash user -> units),
--       5 orders (stream: an entry per batch, core/orders.py), 6 orders_n (orders created),
--       7 order_by_id (hash order id ->
--       "<status>|<user>|<qty>|<unit_price>|<created_ms>|<pay_by_ms>", core/orders.py),
--       8 reg (set of registered users), 9 revenue, 10 sold_out_ms, 11 the event's units
--       (units held by live orders over all its SKUs), 12 the event's milestones (hash
--       threshold -> "<reached_ms>|<order id>") (FIXED_KEYS in all; 11 and 12 are the
--       event's, in another hash slot than the SKU's: docs/DESIGN.md),
--       then one key per reservation that carries an Idempotency-Key, in the order of
--       those reservations: where its order id is kept ("<order id>|<fingerprint>").
-- ARGV: 1 n, then n times: order_id, user, spec, where spec is the qty, or
--       "<qty>|<fingerprint>" for a request with a key (its key is the next of the keys
--       after the fixed ones; a fingerprint holds no "|"). Three values per reservation:
--       each value costs Redis an object and Lua a string. Order ids are unique (the
--       worker makes them): a new order's id is not looked up.
-- Reply: {sold, stock, created_ms, pay_by_ms (of this batch's new orders), then per
--        reservation, by its code: SOLD: code, unit_price; SOLD_TIERS (a new order whose
--        units straddle price tiers): code, the first unit's price, amount, breakdown
--        ("<qty>x<price>,..."); EXISTS and REPLAY (an order that exists): code, order_id,
--        unit_price, qty, created_ms, pay_by_ms, breakdown ("" for an order of one
--        price); any other code: the code alone}
--
-- Codes (core/outcomes.py; the locals are put in front of this source): SOLD (a new
-- order), SOLD_TIERS (a new order at more than one price), SOLD_OUT, LIMIT_EXCEEDED,
-- NOT_STARTED, ENDED, PAUSED, NOT_REGISTERED,
-- IDEMPOTENCY_MISMATCH, EXISTS (this order id came earlier in the same batch: it is sold
-- once), REPLAY (an Idempotency-Key's earlier order), NOT_FOUND (the SKU has no
-- definition, or a key's order is gone).
-- FIXED_KEYS and IDEM_TTL_S are put in front of this source too (core/keys.py).
-- Malformed arguments (n not the count of reservations that follow, not one key per
-- reservation with a key, a qty that is not an integer from 1 to 10^9, a spec with a
-- "|" but no fingerprint) are an error before anything is written.
-- Variadic commands take at most CHUNK names (or name/value pairs) at a time (Lua's unpack()
-- has a limit of a few thousand values); the worker sends at most 256 per call.
local CHUNK = 1000
local n = tonumber(ARGV[1])
if not n or n < 0 or n ~= math.floor(n) or #ARGV ~= 1 + 3 * n then
  return redis.error_reply('ERR commit: ' .. #ARGV .. ' arguments for ' .. tostring(ARGV[1]) ..
                           ' reservations')
end
local m = redis.call('HMGET', KEYS[1], 'starts', 'ends', 'paused', 'limit', 'price',
                     'tiers', 'pay_ms', 'reg', 'ms')
local stock = tonumber(redis.call('GET', KEYS[2]) or '0')
local sold = tonumber(redis.call('GET', KEYS[3]) or '0')
local out = {0, stock, 0, 0}
if n == 0 then
  out[1] = sold
  return out
end
if not m[1] then
  for i = 1, n do out[#out + 1] = NOT_FOUND end
  out[1] = sold
  return out
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local starts, ends = tonumber(m[1]), tonumber(m[2])
local paused, limit, price = m[3] == '1', tonumber(m[4]), tonumber(m[5])
local pay_ms, reg = tonumber(m[7]), m[8] == '1'
out[3] = now
out[4] = now + pay_ms
-- the price ladder: "units,price,units,price,..."; tier k covers the next units_k units
-- (each value also kept as its string: see `strings` below)
local tiers, tiers_s = {}, {}
if m[6] and m[6] ~= '' then
  for v in string.gmatch(m[6], '[^,]+') do
    tiers[#tiers + 1] = tonumber(v); tiers_s[#tiers_s + 1] = v
  end
end
local function unit_price(before)
  local edge = 0
  for k = 1, #tiers, 2 do
    edge = edge + tiers[k]
    if before < edge then return tiers[k + 1], tiers_s[k + 1], edge end
  end
  return price, m[5], nil
end
-- The price of `qty` units sold after `before` units when they straddle tiers: each unit
-- at its own tier's price. Returns the amount and the breakdown "<qty>x<price>,..." (runs
-- of one price merged, in the order the units are sold), or nil when every unit has one
-- price after all (two tiers of the same price).
local function straddle(before, qty)
  local counts, prices = {}, {}
  local amount, at, last, edge = 0, before, before + qty, 0
  local function add(c, p, p_s)
    if c <= 0 then return end
    amount = amount + c * p
    if #prices > 0 and prices[#prices] == p_s then
      counts[#counts] = counts[#counts] + c
    else
      counts[#counts + 1] = c; prices[#prices + 1] = p_s
    end
  end
  for k = 1, #tiers, 2 do
    edge = edge + tiers[k]
    if at < edge and at < last then
      local c = math.min(edge, last) - at
      add(c, tiers[k + 1], tiers_s[k + 1])
      at = at + c
    end
  end
  add(last - at, price, m[5])
  if #prices == 1 then return nil end
  local parts = {}
  for j = 1, #prices do parts[j] = string.format('%d', counts[j]) .. 'x' .. prices[j] end
  return amount, table.concat(parts, ',')
end
-- the milestones' thresholds ("150,300", ascending), from the SKU's meta
local thresholds = {}
if m[9] and m[9] ~= '' then
  for v in string.gmatch(m[9], '[^,]+') do thresholds[#thresholds + 1] = v end
end
local function refuse(code)
  out[#out + 1] = code
end
-- an order that exists (EXISTS: the same order id earlier in the batch, REPLAY: a key's
-- earlier order) and its figures
local function order_part(code, oid, unit_price, qty, created, payby, bd)
  out[#out + 1] = code; out[#out + 1] = oid; out[#out + 1] = tonumber(unit_price)
  out[#out + 1] = tonumber(qty); out[#out + 1] = tonumber(created)
  out[#out + 1] = tonumber(payby); out[#out + 1] = bd or ''
end
-- a key's order stored before this batch, from its record
local function existing(code, oid)
  local v = redis.call('HGET', KEYS[7], oid)
  local qty, up, created, payby
  if v then
    qty, up, created, payby = string.match(v, '^[^|]*|[^|]*|(%d+)|(%d+)|(%d+)|(%d+)')
  end
  if qty then
    order_part(code, oid, up, qty, created, payby, string.match(v, '|bd=([%dx,]+)'))
  else
    -- the order is gone (deleted by hand): say so, keep the reply aligned
    refuse(NOT_FOUND)
  end
end
-- The sales of this batch, in order, one array per field (no table per sale):
-- order id, user, qty and unit price (the first unit's; as strings), idempotency key
-- (false = none), fingerprint, price breakdown (false = one price).
local s_oid, s_user, s_qty, s_up, s_ikey, s_fp, s_bd = {}, {}, {}, {}, {}, {}, {}
local ns = 0
-- an order this very batch made (not stored yet): `k` is its place in the sales
local function made_here(code, k)
  order_part(code, s_oid[k], s_up[k], s_qty[k], out[3], out[4], s_bd[k])
end
-- Two passes. The first decides every reservation from what it reads, counting in
-- local tables what the batch itself sells (a user or an Idempotency-Key may appear
-- twice); the second writes all sales: `sold` once, every buyer's new total in one
-- HSET, then each order and its stream entry. Redis runs the script alone, so this
-- is what a write per sale would leave, with 2 commands per sale instead of 4.
-- What each buyer of the batch already holds: one HMGET for the whole batch.
local names = {}
for i = 0, n - 1 do names[i + 1] = ARGV[3 + i * 3] end
local held = {}
for c = 1, n, CHUNK do
  local part = redis.call('HMGET', KEYS[4], unpack(names, c, math.min(c + CHUNK - 1, n)))
  for k = 1, #part do held[c + k - 1] = part[k] end
end
local made = {}      -- order id -> its place in the sales
local total = {}     -- user -> units they hold once this batch's sales so far count
local claimed = {}   -- idempotency key -> the place in the sales of the order it made
local sold0, revenue = sold, 0
local nkeys = FIXED_KEYS  -- KEYS used so far: the next reservation with a key takes the next
for i = 0, n - 1 do
  local b = 2 + i * 3
  local oid, user, spec = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  local qty_s, fp = spec, ''
  local ikey = nil
  local bar = string.find(spec, '|', 1, true)
  if bar then
    if bar == #spec or string.find(spec, '|', bar + 1, true) then
      return redis.error_reply('ERR commit: bad spec ' .. spec)
    end
    nkeys = nkeys + 1
    ikey = KEYS[nkeys]
    if not ikey then
      return redis.error_reply('ERR commit: no key for the Idempotency-Key of reservation ' ..
                               (i + 1))
    end
    qty_s, fp = string.sub(spec, 1, bar - 1), string.sub(spec, bar + 1)
  end
  local qty = tonumber(qty_s)
  if not qty or qty < 1 or qty % 1 ~= 0 or qty > 1e9 then
    -- (nothing is written before every reservation of the batch has been decided)
    return redis.error_reply('ERR commit: bad qty ' .. qty_s)
  end
  local prior = nil
  local mine = nil
  if ikey then
    mine = claimed[ikey]
    if not mine then prior = redis.call('GET', ikey) end
  end
  if made[oid] then
    -- the same order id twice in one batch (never from the worker): it is sold once
    made_here(EXISTS, made[oid])
  elseif mine then
    -- the key's order was made earlier in this very batch
    if s_fp[mine] == fp then
      made_here(REPLAY, mine)
    else
      refuse(IDEMPOTENCY_MISMATCH)
    end
  elseif prior then
    local sep = string.find(prior, '|', 1, true)
    if string.sub(prior, sep + 1) == fp then
      existing(REPLAY, string.sub(prior, 1, sep - 1))
    else
      refuse(IDEMPOTENCY_MISMATCH)
    end
  elseif now < starts then
    refuse(NOT_STARTED)
  elseif now >= ends then
    refuse(ENDED)
  elseif paused then
    refuse(PAUSED)
  elseif reg and redis.call('SISMEMBER', KEYS[8], user) == 0 then
    refuse(NOT_REGISTERED)
  elseif (total[user] or tonumber(held[i + 1]) or 0) + qty > limit then
    refuse(LIMIT_EXCEEDED)
  elseif sold + qty > stock then
    refuse(SOLD_OUT)
  else
    local up, up_s, edge = unit_price(sold)
    -- an order past its first unit's tier (rare) is priced unit by unit
    local amount, bd
    if edge and sold + qty > edge then amount, bd = straddle(sold, qty) end
    if not bd then amount = up * qty end
    sold = sold + qty
    total[user] = (total[user] or tonumber(held[i + 1]) or 0) + qty
    revenue = revenue + amount
    if qty_s ~= '1' then qty_s = string.format('%d', qty) end  -- canonical: '2.0' -> '2'
    ns = ns + 1
    s_oid[ns], s_user[ns], s_qty[ns], s_up[ns], s_ikey[ns], s_fp[ns], s_bd[ns] =
      oid, user, qty_s, up_s, ikey or false, fp, bd or false
    made[oid] = ns
    if ikey then claimed[ikey] = ns end
    if bd then
      out[#out + 1] = SOLD_TIERS; out[#out + 1] = up; out[#out + 1] = amount
      out[#out + 1] = bd
    else
      out[#out + 1] = SOLD; out[#out + 1] = up
    end
  end
end
if nkeys ~= #KEYS then
  return redis.error_reply('ERR commit: ' .. #KEYS .. ' keys for ' .. (nkeys - FIXED_KEYS) ..
                           ' Idempotency-Keys')
end
if ns > 0 then
  -- sold first: scripts do not roll back, so a failure below can only undersell; the
  -- event's units with it (every event: returns take them back; milestones count them)
  local batch_units = sold - sold0
  redis.call('INCRBY', KEYS[3], batch_units)
  local after = redis.call('INCRBY', KEYS[11], batch_units)
  local totals = {}
  for user, units in pairs(total) do
    totals[#totals + 1] = user
    totals[#totals + 1] = string.format('%d', units)
  end
  for c = 1, #totals, 2 * CHUNK do
    redis.call('HSET', KEYS[4], unpack(totals, c, math.min(c + 2 * CHUNK - 1, #totals)))
  end
  -- Numbers go to redis.call as strings: Redis 6.2 formats a Lua number argument with
  -- snprintf("%.17g"), a tenth of this script's time when every qty, price and time
  -- of every order went that way. qty is formatted with %d (an integer, checked above),
  -- the prices are the strings of the event's definition.
  local now, payby = string.format('%d', out[3]), string.format('%d', out[4])
  -- Every order of the batch goes into the SKU's one hash of orders, in one HSET: a
  -- key per order cost Redis a keyspace entry and a call per order (docs/DESIGN.md).
  -- order_id, event_id and sku are in the id, amount is unit_price * qty (or the sum of
  -- the breakdown "bd" of an order across tiers): readers add them (core/orders.py
  -- from_record).
  local records = {}
  local tail = '|' .. now .. '|' .. payby
  for k = 1, ns do
    records[2 * k - 1] = s_oid[k]
    records[2 * k] = 'reserved|' .. s_user[k] .. '|' .. s_qty[k] .. '|' .. s_up[k] .. tail
    if s_bd[k] then records[2 * k] = records[2 * k] .. '|bd=' .. s_bd[k] end
  end
  for c = 1, #records, 2 * CHUNK do
    redis.call('HSET', KEYS[7], unpack(records, c, math.min(c + 2 * CHUNK - 1, #records)))
  end
  -- One stream entry for the batch's new orders (core/orders.py, "the stream"): type,
  -- ts, then per order its id -> "<user>|<qty>|<unit_price>". An entry per order cost
  -- Redis a command of 14 arguments per order, each of them written to the AOF again.
  local entry = {'type', 'created', 'ts', now}
  for k = 1, ns do
    entry[#entry + 1] = s_oid[k]
    entry[#entry + 1] = s_user[k] .. '|' .. s_qty[k] .. '|' .. s_up[k]
    if s_ikey[k] then
      redis.call('SET', s_ikey[k], s_oid[k] .. '|' .. s_fp[k], 'EX', IDEM_TTL_S)
    end
  end
  for c = 5, #entry, 2 * CHUNK do
    redis.call('XADD', KEYS[5], '*', 'type', 'created', 'ts', now,
               unpack(entry, c, math.min(c + 2 * CHUNK - 1, #entry)))
  end
  if sold >= stock then redis.call('SET', KEYS[10], now, 'NX') end
  -- per batch, not per order (counters for stats; the stream is the record)
  redis.call('INCRBY', KEYS[6], ns)
  redis.call('INCRBY', KEYS[9], revenue)
  -- The milestones this batch reached: a threshold t with before < t <= after (the
  -- event's units) is reached by the sale whose units took the running total from
  -- below t to t or beyond, recorded once (HSETNX: once reached it stays reached,
  -- whatever returns do later).
  local before = after - batch_units
  if #thresholds > 0 and tonumber(thresholds[#thresholds]) > before then
    local k, running = 0, before
    for j = 1, #thresholds do
      local t = tonumber(thresholds[j])
      if t > after then break end
      if t > before then
        while running < t do
          k = k + 1
          running = running + tonumber(s_qty[k])
        end
        redis.call('HSETNX', KEYS[12], thresholds[j], now .. '|' .. s_oid[k])
      end
    end
  end
end
out[1] = sold
return out
