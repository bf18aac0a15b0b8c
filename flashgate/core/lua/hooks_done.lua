-- A delivery's end: acknowledged (a 2xx), or dropped (its event has no URL now).
-- KEYS: 1 due, 2 lease, 3 body, 4 meta
-- ARGV: 1 delivery id, 2 the attempt (fencing token) of the caller's claim
-- Reply: 1 done, 0 the caller's claim is stale (claimed again since) or it is gone.
local meta = redis.call('HGET', KEYS[4], ARGV[1])
if not meta or string.match(meta, '^(%d+)|') ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
return 1
