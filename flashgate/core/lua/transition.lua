-- What becomes of one SKU's orders after the sale: paid, cancelled, expired. Redis
-- decides each transition here, by its own clock, so paying and expiring cannot both
-- win: the loser is answered 'conflict'.
--
-- KEYS (core/keys.py; 1-9 of one SKU's hash tag, 10 the event's):
--       1 meta (hash: 'ends'), 2 sold, 3 buyers (hash user -> units),
--       4 orders (stream, core/orders.py), 5 order_by_id (hash order id -> record),
--       6 revenue, 7 returned, 8 units_paid, 9 revenue_paid, 10 the event's units
-- ARGV: 1 the action: 'paid' (payment confirmed), 'cancel' (the operator's), 'expire'
--       (the sweeper's: only orders past their deadline), then the order ids.
-- Reply: {sold, then per order id: outcome, record (after the call; '' if none)}, the
--        outcomes: 'done' (the order is now as asked), 'same' (it already was: paying a
--        paid order, cancelling a cancelled one), 'conflict' (another final state, or a
--        payment or cancel of an order past its deadline, which expires it instead),
--        'not_found' (no such order), 'not_due' (expire: not reserved, or not yet due).
--
-- A record is "<status>|<user>|<qty>|<unit_price>|<created_ms>|<pay_by_ms>" then
-- "|name=value" fields (core/orders.py). A transition rewrites the status and sets
-- updated_ms=<now>. The order's units are returned (sold, its buyer's units and the
-- event's units go down by qty; returned up by qty; revenue down by the amount) only
-- if it ended before the sale's end (a cancel: Redis TIME now; an expiry: its
-- pay_by_ms); after it the order keeps them (kept=1): "the end is the end", no unit
-- comes back to a sale that is over.
-- Every transition of the call goes into one stream entry per type ('paid',
-- 'cancelled', 'expired'): type, ts, then order id -> "<user>|<qty>|<unit_price>".
local action = ARGV[1]
if action ~= 'paid' and action ~= 'cancel' and action ~= 'expire' then
  return redis.error_reply('ERR transition: unknown action ' .. tostring(action))
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_s = string.format('%d', now)
local ends = tonumber(redis.call('HGET', KEYS[1], 'ends') or '0')
local out = {0}
local entries = {paid = {}, cancelled = {}, expired = {}}
local returned, revenue_back, paid_units, paid_revenue = 0, 0, 0, 0
local back = {}  -- user -> units given back by this call
local records = {}  -- order id -> its record as this call left it (an id may come twice)

-- the record's parts: status, user, qty, unit_price, created, pay_by, and the later
-- fields as a list of "name=value" strings
local function parse(rec)
  local p = {}
  for v in string.gmatch(rec, '[^|]+') do p[#p + 1] = v end
  if #p < 6 then return nil end
  local later = {}
  for k = 7, #p do later[#later + 1] = p[k] end
  return p, later
end

-- the amount of an order: the sum of its price breakdown (bd=<qty>x<price>,...) when
-- its units straddle two tiers, else qty * unit_price
local function amount(p, later)
  for _, f in ipairs(later) do
    local bd = string.match(f, '^bd=(.*)$')
    if bd then
      local sum = 0
      for q, u in string.gmatch(bd, '(%d+)x(%d+)') do sum = sum + tonumber(q) * tonumber(u) end
      return sum
    end
  end
  return tonumber(p[3]) * tonumber(p[4])
end

-- the record with a new status, updated_ms=now, and kept=1 when the units stay
local function rewrite(p, later, status, kept)
  local parts = {status, p[2], p[3], p[4], p[5], p[6]}
  for _, f in ipairs(later) do
    if string.sub(f, 1, 11) ~= 'updated_ms=' then parts[#parts + 1] = f end
  end
  parts[#parts + 1] = 'updated_ms=' .. now_s
  if kept then parts[#parts + 1] = 'kept=1' end
  return table.concat(parts, '|')
end

-- end a reserved order as `status` ('cancelled' or 'expired'): its units come back if
-- the sale was still open when it ended. A cancel ends it now; an expiry at its
-- deadline, however late the sweeper comes (an order due before the end and swept
-- after it gives its units back: it expired while the sale was open)
local function finish(oid, p, later, status)
  local qty = tonumber(p[3])
  local at = now
  if status == 'expired' then at = math.min(now, tonumber(p[6])) end
  local open = at < ends
  if open then
    back[p[2]] = (back[p[2]] or 0) + qty
    returned = returned + qty
    revenue_back = revenue_back + amount(p, later)
  end
  local rec = rewrite(p, later, status, not open)
  records[oid] = rec
  local e = entries[status]
  e[#e + 1] = oid; e[#e + 1] = p[2] .. '|' .. p[3] .. '|' .. p[4]
  return rec
end

for i = 2, #ARGV do
  local oid = ARGV[i]
  local rec = records[oid] or redis.call('HGET', KEYS[5], oid)
  local p, later
  if rec then p, later = parse(rec) end
  local outcome
  if not p then
    outcome, rec = 'not_found', ''
  else
    local status, due = p[1], now >= tonumber(p[6])
    if action == 'expire' then
      if status == 'reserved' and due then
        outcome, rec = 'done', finish(oid, p, later, 'expired')
      else
        outcome = 'not_due'
      end
    elseif status == 'reserved' and due then
      -- past its deadline: it expires, whatever was asked
      outcome, rec = 'conflict', finish(oid, p, later, 'expired')
    elseif action == 'paid' then
      if status == 'paid' then
        outcome = 'same'
      elseif status == 'reserved' then
        paid_units = paid_units + tonumber(p[3])
        paid_revenue = paid_revenue + amount(p, later)
        rec = rewrite(p, later, 'paid', false)
        records[oid] = rec
        local e = entries.paid
        e[#e + 1] = oid; e[#e + 1] = p[2] .. '|' .. p[3] .. '|' .. p[4]
        outcome = 'done'
      else
        outcome = 'conflict'
      end
    else  -- cancel
      if status == 'cancelled' then
        outcome = 'same'
      elseif status == 'reserved' then
        outcome, rec = 'done', finish(oid, p, later, 'cancelled')
      else
        outcome = 'conflict'
      end
    end
  end
  out[#out + 1] = outcome
  out[#out + 1] = rec
end

-- The records first, then the stream (a reader of the stream finds the record as the
-- entry says), then the buyers and the totals, sold last: scripts do not roll back,
-- so a failure part-way can only leave units held that were given back (undersell),
-- never units given back that an order still holds.
local changed = {}
for oid, rec in pairs(records) do
  changed[#changed + 1] = oid; changed[#changed + 1] = rec
end
if #changed > 0 then redis.call('HSET', KEYS[5], unpack(changed)) end
for _, kind in ipairs({'paid', 'cancelled', 'expired'}) do
  local e = entries[kind]
  if #e > 0 then redis.call('XADD', KEYS[4], '*', 'type', kind, 'ts', now_s, unpack(e)) end
end
for user, qty in pairs(back) do
  if redis.call('HINCRBY', KEYS[3], user, -qty) <= 0 then redis.call('HDEL', KEYS[3], user) end
end
if returned > 0 then
  redis.call('INCRBY', KEYS[7], returned)
  redis.call('DECRBY', KEYS[6], revenue_back)
  redis.call('DECRBY', KEYS[10], returned)
  redis.call('DECRBY', KEYS[2], returned)
end
if paid_units > 0 then
  redis.call('INCRBY', KEYS[8], paid_units)
  redis.call('INCRBY', KEYS[9], paid_revenue)
end
out[1] = tonumber(redis.call('GET', KEYS[2]) or '0')
return out
