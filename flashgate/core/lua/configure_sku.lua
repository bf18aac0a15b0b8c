-- Create or replace one SKU's definition atomically with respect to sales.
-- KEYS: 1 meta (hash), 2 stock, 3 sold
-- ARGV: 1 stock, then field/value pairs for the meta hash
-- Reply: {"ok", sold} or {"conflict", sold} when the new stock is below units sold.
local stock = tonumber(ARGV[1])
local sold = tonumber(redis.call('GET', KEYS[3]) or '0')
if stock < sold then return {'conflict', sold} end
redis.call('SET', KEYS[2], stock)
redis.call('SETNX', KEYS[3], 0)
local f = {}
for i = 2, #ARGV do f[#f + 1] = ARGV[i] end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(f))
return {'ok', sold}
