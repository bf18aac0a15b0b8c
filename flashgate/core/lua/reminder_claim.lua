-- Claim the sending of one reminder of an event (one offset), for one producer.
-- The field holds "pending|<cutoff ms>|<lease end ms>" while a producer enqueues its
-- batches, then "done|..." or "skipped|..." for good. A pending claim whose lease ran
-- out (its producer died part-way) is taken over with the same cutoff, so the batches
-- are the same and the ones already enqueued are not enqueued twice (delivery ids).
-- KEYS: 1 the event's notified hash
-- ARGV: 1 field ("reminder:<offset>"), 2 now (ms, the producer's clock), 3 lease (ms)
-- Reply: the cutoff (users registered up to it are reminded), or nil: not this caller's.
local v = redis.call('HGET', KEYS[1], ARGV[1])
local now = tonumber(ARGV[2])
if not v then
  redis.call('HSET', KEYS[1], ARGV[1],
             'pending|' .. ARGV[2] .. '|' .. tostring(now + tonumber(ARGV[3])))
  return ARGV[2]
end
local state, cutoff, deadline = string.match(v, '^(%a+)|(%d+)|(%d+)')
if state == 'pending' and tonumber(deadline) < now then
  redis.call('HSET', KEYS[1], ARGV[1],
             'pending|' .. cutoff .. '|' .. tostring(now + tonumber(ARGV[3])))
  return cutoff
end
return false
