-- Give dead letters another chance: each named one (all if none is named) is queued
-- again, due at once, its attempts counted from 0 and its give-up time from now.
-- KEYS: 1 dead, 2 due, 3 body, 4 meta
-- ARGV: delivery ids (none: every dead letter)
-- Reply: the ids queued again.
local t = redis.call('TIME')
local now = tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local ids = ARGV
if #ids == 0 then ids = redis.call('HKEYS', KEYS[1]) end
local out = {}
for _, id in ipairs(ids) do
  local raw = redis.call('HGET', KEYS[1], id)
  if raw then
    local d = cjson.decode(raw)
    redis.call('HSET', KEYS[3], id, d.body)
    redis.call('HSET', KEYS[4], id, '0|' .. now .. '|' .. d.event_id .. '|')
    redis.call('ZADD', KEYS[2], now, id)
    redis.call('HDEL', KEYS[1], id)
    out[#out + 1] = id
  end
end
return out
