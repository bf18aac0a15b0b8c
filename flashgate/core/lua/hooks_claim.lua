-- Claim deliveries that are due, for one sender: each moves from due to a lease
-- (until now + lease) and its attempt count grows by one; the count is the claim's
-- fencing token (ack and retry name it, so a sender whose lease ran out and was
-- claimed again cannot decide for the new holder). Leases that ran out (a sender
-- died or stalled) are due again first.
-- KEYS: 1 due, 2 lease, 3 body, 4 meta, 5 urls
-- ARGV: 1 how many at most, 2 lease length (ms)
-- Reply: {{id, body, url ("" when the event has none now), attempt, enqueued ms}, ...}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local snow = tostring(now)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', snow, 'LIMIT', 0, 1000)
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZADD', KEYS[1], snow, id)
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', snow, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
local until_ms = tostring(now + tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local body = redis.call('HGET', KEYS[3], id)
  local meta = redis.call('HGET', KEYS[4], id)
  local n, enq, ev, err
  if meta then n, enq, ev, err = string.match(meta, '^(%d+)|(%d+)|([^|]*)|(.*)$') end
  if body and n then
    local attempt = tostring(tonumber(n) + 1)
    redis.call('HSET', KEYS[4], id, attempt .. '|' .. enq .. '|' .. ev .. '|' .. err)
    redis.call('ZADD', KEYS[2], until_ms, id)
    out[#out + 1] = {id, body, redis.call('HGET', KEYS[5], ev) or '', attempt, enq}
  else  -- (never written whole, or its meta unreadable: drop the remains)
    redis.call('HDEL', KEYS[3], id)
    redis.call('HDEL', KEYS[4], id)
  end
end
return out
