-- One purchase, decided and recorded in one round trip (the conventional design).
--
-- KEYS: 1 stock, 2 sold, 3 buyers (hash user -> units), 4 orders (stream),
--       5 paused flag, 6 the order's hash
-- ARGV: 1 user, 2 qty, 3 starts_at_ms, 4 ends_at_ms, 5 per_user_limit,
--       6 price, 7 tiers "units:price,units:price" (may be empty), 8 order id,
--       9 event id, 10 sku, 11 payment timeout (ms)
-- Returns {"ok", unit_price, created_ms} or {error_code}.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now < tonumber(ARGV[3]) then return {'not_started'} end
if now >= tonumber(ARGV[4]) then return {'ended'} end
if redis.call('EXISTS', KEYS[5]) == 1 then return {'paused'} end

local qty = tonumber(ARGV[2])
local stock = tonumber(redis.call('GET', KEYS[1]) or '0')
local sold = tonumber(redis.call('GET', KEYS[2]) or '0')
if sold + qty > stock then return {'sold_out'} end
local held = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
if held + qty > tonumber(ARGV[5]) then return {'limit_exceeded'} end

-- price ladder: the first tier's units go at its price, then the next tier's, ...
local unit_price = tonumber(ARGV[6])
local upto = 0
for units, price in string.gmatch(ARGV[7], '(%d+):(%d+)') do
  upto = upto + tonumber(units)
  if sold < upto then
    unit_price = tonumber(price)
    break
  end
end

redis.call('INCRBY', KEYS[2], qty)
redis.call('HINCRBY', KEYS[3], ARGV[1], qty)
local pay_by = now + tonumber(ARGV[11])
redis.call('HSET', KEYS[6], 'event_id', ARGV[9], 'sku', ARGV[10], 'user_id', ARGV[1],
  'qty', qty, 'unit_price', unit_price, 'status', 'reserved',
  'created_ms', now, 'pay_by_ms', pay_by)
redis.call('XADD', KEYS[4], '*', 'type', 'created', 'order_id', ARGV[8],
  'user_id', ARGV[1], 'qty', qty, 'unit_price', unit_price, 'ts_ms', now)
return {'ok', unit_price, now}
