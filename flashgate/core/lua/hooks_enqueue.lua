-- Put one webhook delivery in the outbox, once per delivery id.
-- KEYS: 1 urls (hash event -> webhook_url), 2 seen (zset id -> enqueued ms),
--       3 due (zset id -> when it may be sent), 4 body (hash id -> JSON), 5 meta (hash)
-- ARGV: 1 delivery id, 2 event id, 3 the JSON body
-- Reply: 1 enqueued, 0 the event has no webhook_url (nothing stored), -1 this id was
-- enqueued before (within the seen window: nothing stored).
if not redis.call('HGET', KEYS[1], ARGV[2]) then return 0 end
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then return -1 end
local t = redis.call('TIME')
local now = tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[3])
-- meta: "<attempts>|<enqueued ms>|<event>|<last error>"
redis.call('HSET', KEYS[5], ARGV[1], '0|' .. now .. '|' .. ARGV[2] .. '|')
redis.call('ZADD', KEYS[3], now, ARGV[1])
return 1
