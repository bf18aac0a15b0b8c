-- Remove one consumer from a stream's consumer group if it is gone: nothing pending and
-- no read for a while (core/follow.py). Checked and removed in one step: a consumer that
-- reads between a check and a removal made apart would lose the entries it just read
-- from the group's pending list.
-- KEYS: 1 the stream. ARGV: 1 the group, 2 the consumer, 3 the least idle time (ms).
-- Reply: 1 removed, 0 kept (or not there).
for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local d = {}
  for i = 1, #info, 2 do d[info[i]] = info[i + 1] end
  if d['name'] == ARGV[2] then
    if d['pending'] == 0 and d['idle'] > tonumber(ARGV[3]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
      return 1
    end
    return 0
  end
end
return 0
