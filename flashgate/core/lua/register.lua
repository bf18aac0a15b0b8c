-- A registration's time: Redis TIME read and written in one step (HSETNX: the first
-- time is kept), so a reminder that takes the users registered up to its cutoff never
-- misses one whose time is before the cutoff but whose write came after its scan.
-- KEYS: 1 the event's registrations (hash user -> ms). ARGV: 1 the user.
-- Reply: 1 when newly registered, 0 when registered before.
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
return redis.call('HSETNX', KEYS[1], ARGV[1], now)
