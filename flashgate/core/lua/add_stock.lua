-- The operator adds units to one SKU's stock, while its sale has not ended.
-- KEYS (core/keys.py, one SKU's hash tag): 1 meta (hash: 'ends'), 2 stock, 3 sold,
--       4 added (units added so far: the configure script keeps stock = defined + added)
-- ARGV: 1 units to add (an integer >= 1, checked by the caller), 2 the most a stock may
--       be (core/events.py MAX_STOCK: the scripts' figures stay exact)
-- Reply: {'ok', stock, sold, added} after the addition; {'not_found'} for a SKU without
--        a definition; {'ended', stock, sold, added} at or after the end, by Redis TIME
--        ("the end is the end": no stock is added after it); {'too_much', stock, sold,
--        added} when the stock would exceed ARGV[2] (nothing added).
local ends = redis.call('HGET', KEYS[1], 'ends')
if not ends then return {'not_found'} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local sold = tonumber(redis.call('GET', KEYS[3]) or '0')
if now >= tonumber(ends) then
  return {'ended', tonumber(redis.call('GET', KEYS[2]) or '0'), sold,
          tonumber(redis.call('GET', KEYS[4]) or '0')}
end
local stock = tonumber(redis.call('GET', KEYS[2]) or '0')
if stock + tonumber(ARGV[1]) > tonumber(ARGV[2]) then
  return {'too_much', stock, sold, tonumber(redis.call('GET', KEYS[4]) or '0')}
end
local added = redis.call('INCRBY', KEYS[4], ARGV[1])
stock = redis.call('INCRBY', KEYS[2], ARGV[1])
return {'ok', stock, sold, added}
