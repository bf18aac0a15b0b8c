-- A failed attempt: due again after a delay, or given up (dead letter) when the next
-- attempt would come later than the give-up time after it was enqueued.
-- KEYS: 1 due, 2 lease, 3 body, 4 meta, 5 dead (hash id -> JSON)
-- ARGV: 1 delivery id, 2 the attempt (fencing token), 3 delay (ms), 4 give up after
--       (ms from enqueued), 5 what went wrong
-- Reply: 1 due again, 2 given up, 0 the caller's claim is stale.
local meta = redis.call('HGET', KEYS[4], ARGV[1])
if not meta then return 0 end
local n, enq, ev = string.match(meta, '^(%d+)|(%d+)|([^|]*)|')
if n ~= ARGV[2] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local err = string.gsub(ARGV[5], '|', '/')
redis.call('ZREM', KEYS[2], ARGV[1])
if now + tonumber(ARGV[3]) - tonumber(enq) > tonumber(ARGV[4]) then
  local body = redis.call('HGET', KEYS[3], ARGV[1]) or ''
  redis.call('HSET', KEYS[5], ARGV[1], cjson.encode({
    id = ARGV[1], event_id = ev, attempts = tonumber(n), enqueued_ms = tonumber(enq),
    dead_ms = now, error = err, body = body}))
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('HDEL', KEYS[4], ARGV[1])
  return 2
end
redis.call('HSET', KEYS[4], ARGV[1], n .. '|' .. enq .. '|' .. ev .. '|' .. err)
redis.call('ZADD', KEYS[1], tostring(now + tonumber(ARGV[3])), ARGV[1])
return 1
