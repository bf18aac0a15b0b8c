-- Create or replace one SKU's definition atomically with respect to sales.
-- KEYS: 1 meta (hash), 2 stock, 3 sold, 4 added (units the operator added since)
-- ARGV: 1 stock (as defined), 2 the pause flag for a SKU that has none yet, then
--       field/value pairs for the meta hash (never "paused": only pause / resume write it)
-- The SKU's stock is the defined stock plus the units added (lua/add_stock.lua).
-- Reply: {"ok", sold} or {"conflict", sold} when the new stock is below units sold.
local stock = tonumber(ARGV[1]) + tonumber(redis.call('GET', KEYS[4]) or '0')
local sold = tonumber(redis.call('GET', KEYS[3]) or '0')
if stock < sold then return {'conflict', sold} end
redis.call('SET', KEYS[2], stock)
redis.call('SETNX', KEYS[3], 0)
local f = {}
for i = 3, #ARGV do f[#f + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(f))
redis.call('HSETNX', KEYS[1], 'paused', ARGV[2])
return {'ok', sold}
