-- Flash-sale load for wrk (LuaJIT): buyers hitting POST /api/v1/events/{id}/buy.
--
-- Options come after `--` on the wrk command line, as key=value:
--   event=ID        event id                                  (default "bench")
--   skus=a,b,c      SKUs to buy, one picked at random per request
--   users=N         pick buyers at random among N users; 0 = a new user per request
--   prefix=STR      prefix of user ids (keeps runs apart: "r3-")
--   views=P         percent of requests that are event views (GET /api/v1/events/{id})
--   auth=dev|token  X-User-Id header, or a signed bearer token (HMAC-SHA256 via libcrypto)
--   secret=S        user secret for auth=token;  ttl=SECONDS token lifetime (3600)
--   xff=1           send X-Forwarded-For with a distinct client IP per new user
--   codes=1         count the "error" code of every non-200 body (rejection mix)
--   track=1         time every 200 by matching the order's user_id (latency of sales)
--   limit=N         each thread stops after N requests (wrk's -d still caps the run)
--   flag=PATH       with limit: each thread then creates PATH<thread number>, so the
--                   caller can end wrk early (SIGINT makes wrk print its summary)
--   seed=N          random seed (each thread adds its own number)
--
-- done() prints one line "BENCH_JSON {...}" with wrk's summary, latency percentiles
-- (microseconds), responses by status, orders (200s to a buy), rejection codes and
-- the latency of sales.

local ffi = require("ffi")

ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                    const unsigned char *d, size_t n, unsigned char *md,
                    unsigned int *md_len);
]]

local threads = {}
local thread_count = 0

function setup(thread)
   thread_count = thread_count + 1
   thread:set("thread_id", thread_count)
   table.insert(threads, thread)
end

-- ---------------------------------------------------------------- per thread

local opts = {}
local skus = {}
local buy_heads, buy_tails = {}, {}
local view_req
local sent = 0
local limit = 0
local users, views = 0, 0
local ts = ffi.new("bench_timespec")
local hex = {}
for i = 0, 255 do hex[i] = string.format("%02x", i) end
local md = ffi.new("unsigned char[32]")
local md_len = ffi.new("unsigned int[1]")
local sha256
local token_cache = {}
local pending = {}

-- per-thread results, read by done() through thread:get()
statuses = {}
orders = 0
codes = {}
sales_us = {}

local function now_us()
   ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
   return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
end

local function wall_ms()
   ffi.C.clock_gettime(0, ts) -- CLOCK_REALTIME
   return tonumber(ts.tv_sec) * 1000 + math.floor(tonumber(ts.tv_nsec) / 1000000)
end

local function token(user)
   local exp = tostring(opts.expires)
   local msg = user .. "." .. exp
   ffi.C.HMAC(sha256, opts.secret, #opts.secret, msg, #msg, md, md_len)
   local out = {}
   for i = 0, 31 do out[i + 1] = hex[md[i]] end
   return msg .. "." .. table.concat(out)
end

local function identity(user)
   if opts.auth == "token" then
      local t = token_cache[user]
      if not t then
         t = token(user)
         if users > 0 then token_cache[user] = t end
      end
      return "Authorization: Bearer " .. t .. "\r\n"
   end
   return "X-User-Id: " .. user .. "\r\n"
end

function init(args)
   for _, a in ipairs(args) do
      local k, v = a:match("^([%w_]+)=(.*)$")
      if k then opts[k] = v end
   end
   opts.event = opts.event or "bench"
   opts.prefix = opts.prefix or ""
   opts.auth = opts.auth or "dev"
   users = tonumber(opts.users or "0")
   views = tonumber(opts.views or "0")
   limit = tonumber(opts.limit or "0")
   opts.track = opts.track == "1"
   opts.codes = opts.codes == "1"
   opts.xff = opts.xff == "1"
   if opts.auth == "token" then
      sha256 = ffi.C.EVP_sha256()
      opts.secret = opts.secret or ""
      opts.expires = wall_ms() + tonumber(opts.ttl or "3600") * 1000
   end
   math.randomseed(tonumber(opts.seed or "1") * 1000 + thread_id)
   for s in (opts.skus or "sku"):gmatch("[^,]+") do table.insert(skus, s) end

   local host = wrk.headers["Host"] or "127.0.0.1"
   local path = "/api/v1/events/" .. opts.event
   for i, s in ipairs(skus) do
      local body = '{"sku":"' .. s .. '","qty":1}'
      buy_heads[i] = "POST " .. path .. "/buy HTTP/1.1\r\nHost: " .. host .. "\r\n"
      buy_tails[i] = "Content-Type: application/json\r\nContent-Length: " .. #body
         .. "\r\n\r\n" .. body
   end
   view_req = "GET " .. path .. " HTTP/1.1\r\nHost: " .. host .. "\r\n\r\n"
end

function request()
   sent = sent + 1
   if limit > 0 and sent > limit then
      if sent == limit + 1 and opts.flag then
         local f = io.open(opts.flag .. thread_id, "w")
         if f then f:close() end
      end
      wrk.thread:stop()
   end
   if views > 0 and math.random(100) <= views then
      return view_req
   end
   local user, extra
   if users > 0 then
      user = opts.prefix .. "u" .. math.random(users)
   else
      user = opts.prefix .. "t" .. thread_id .. "n" .. sent
   end
   if opts.xff then
      local n = thread_id * 4194304 + sent
      extra = string.format("X-Forwarded-For: 10.%d.%d.%d\r\n",
         math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
   end
   local i = math.random(#skus)
   if opts.track then pending[user] = now_us() end
   return buy_heads[i] .. identity(user) .. (extra or "") .. buy_tails[i]
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if status == 200 then
      -- with views in the mix, a 200 is a sale only if it carries an order
      if views == 0 or body:find('"order_id"', 1, true) then orders = orders + 1 end
      if opts.track then
         local user = body:match('"user_id"%s*:%s*"([^"]+)"')
         local t0 = user and pending[user]
         if t0 then
            sales_us[#sales_us + 1] = now_us() - t0
            pending[user] = nil
         end
      end
   elseif opts.codes then
      local code = body:match('"error"%s*:%s*"([%w_]+)"') or tostring(status)
      codes[code] = (codes[code] or 0) + 1
   end
end

-- ---------------------------------------------------------------- main thread

local function encode(v)
   local t = type(v)
   if t == "table" then
      if #v > 0 or next(v) == nil then
         local out = {}
         for _, x in ipairs(v) do out[#out + 1] = encode(x) end
         return "[" .. table.concat(out, ",") .. "]"
      end
      local out = {}
      for k, x in pairs(v) do
         out[#out + 1] = string.format("%q", tostring(k)) .. ":" .. encode(x)
      end
      return "{" .. table.concat(out, ",") .. "}"
   elseif t == "string" then
      return string.format("%q", v)
   elseif t == "number" then
      if v ~= v or v == math.huge or v == -math.huge then return "null" end
      return string.format("%.17g", v)
   end
   return tostring(v)
end

function done(summary, latency, requests)
   local st, cd, sales, sold = {}, {}, {}, 0
   for _, t in ipairs(threads) do
      sold = sold + (t:get("orders") or 0)
      for k, v in pairs(t:get("statuses") or {}) do
         st[tostring(k)] = (st[tostring(k)] or 0) + v
      end
      for k, v in pairs(t:get("codes") or {}) do cd[k] = (cd[k] or 0) + v end
      for _, v in ipairs(t:get("sales_us") or {}) do sales[#sales + 1] = v end
   end
   table.sort(sales)
   local function pct(p)
      if #sales == 0 then return nil end
      return sales[math.max(1, math.ceil(#sales * p / 100))]
   end
   local out = {
      duration_us = summary.duration,
      requests = summary.requests,
      bytes = summary.bytes,
      errors = summary.errors,
      latency_us = {
         min = latency.min, max = latency.max, mean = latency.mean,
         stdev = latency.stdev,
         p50 = latency:percentile(50), p90 = latency:percentile(90),
         p99 = latency:percentile(99), p999 = latency:percentile(99.9),
      },
      statuses = st,
      orders = sold,
      codes = cd,
      sales = { count = #sales, p50 = pct(50), p99 = pct(99), p999 = pct(99.9),
                max = sales[#sales] },
   }
   io.write("BENCH_JSON " .. encode(out) .. "\n")
end
