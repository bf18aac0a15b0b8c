-- Flash-sale load for wrk (LuaJIT): buyers hitting POST /api/v1/events/{id}/buy.
--
-- Options come after `--` on the wrk command line, as key=value:
--   event=ID        event id                                  (default "bench")
--   skus=a,b,c      SKUs to buy, one picked at random per request
--   users=N         pick buyers at random among N users u1..uN; 0 = a new user per request
--   prefix=STR      prefix of the new users' ids (keeps runs apart: "r3x")
--   views=P         percent of requests that are event views (GET /api/v1/events/{id})
--   auth=dev|token  X-User-Id header, or a signed bearer token
--   pool=PATH       tokens signed by the harness (bench/tokens.py), one a line. With
--                   users=N: line i is user ui's, all read at init. With users=0:
--                   PATH<thread number> holds that thread's new users in order, user
--                   numbers first+(thread-1)*per, +1, ...; read as they are sent
--   first=N per=N   the numbering of a users=0 pool
--   cycle=1         with users=0: every thread reads PATH itself, from the start again
--                   at its end (for a server that reads no identity: nginx)
--   secret=S        user secret for tokens signed here (HMAC-SHA256 via libcrypto): the
--                   users of a pool-less run (random ones at init), and new users once
--                   a pool has run out (counted: signed_live);  ttl=SECONDS their
--                   lifetime (3600)
--   xff=1           send X-Forwarded-For with a client IP per user: 10.x.y.z from the
--                   user's number (also on views, from a random user's)
--   codes=1         count the "error" code of every non-200 body (rejection mix)
--   track=1         time every 200 by matching the order's user_id (latency of sales)
--   limit=N         each thread stops after N requests (wrk's -d still caps the run)
--   flag=PATH       with limit: each thread then creates PATH<thread number>, so the
--                   caller can end wrk early (SIGINT makes wrk print its summary)
--   seed=N          random seed (each thread adds its own number)
--
-- Identities are built before the run where they can be: a random user's header lines
-- (X-User-Id, or Authorization from the pool, and X-Forwarded-For) once at init, so a
-- request costs one table lookup and a concatenation in either identity; a new user's
-- token is one buffered line read. init() reports its own CPU time (init_cpu_us).
--
-- done() prints one line "BENCH_JSON {...}" with wrk's summary, latency percentiles
-- (microseconds), responses by status, orders (200s to a buy), rejection codes, the
-- latency of sales, tokens signed during the run and init's CPU time.

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
local idents, names, xffs = {}, {}, nil -- random users: header lines, ids, XFF lines
local seq, seq_n                          -- new users: this thread's pool file, last number
local view_head
local pending = {}

-- per-thread results, read by done() through thread:get()
statuses = {}
orders = 0
codes = {}
sales_us = {}
signed_live = 0
init_cpu_us = 0

local function now_us()
   ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
   return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
end

local function wall_ms()
   ffi.C.clock_gettime(0, ts) -- CLOCK_REALTIME
   return tonumber(ts.tv_sec) * 1000 + math.floor(tonumber(ts.tv_nsec) / 1000000)
end

local function thread_cpu_us()
   ffi.C.clock_gettime(3, ts) -- CLOCK_THREAD_CPUTIME_ID: init() runs on wrk's main thread
   return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
end

local octet = {}
for i = 0, 255 do octet[i] = tostring(i) end

-- user n's client IP, 10.x.y.z (one concatenation: cheaper than string.format)
local function xff_of(n)
   return "X-Forwarded-For: 10." .. octet[math.floor(n / 65536) % 256] .. "."
      .. octet[math.floor(n / 256) % 256] .. "." .. octet[n % 256] .. "\r\n"
end

local function token(user)
   local exp = tostring(opts.expires)
   local msg = user .. "." .. exp
   ffi.C.HMAC(sha256, opts.secret, #opts.secret, msg, #msg, md, md_len)
   local out = {}
   for i = 0, 31 do out[i + 1] = hex[md[i]] end
   return msg .. "." .. table.concat(out)
end

-- the header lines of a new user: the next token of the pool, else made here
local function new_identity()
   if seq then
      local tok = seq:read("*l")
      if tok then
         seq_n = seq_n + 1
         local hdr = "Authorization: Bearer " .. tok .. "\r\n"
         if opts.xff then hdr = hdr .. xff_of(seq_n) end
         return hdr, opts.track and tok:match("^[^.]+") or nil
      end
      local first = tonumber(opts.first or "1")
      if opts.cycle and seq_n >= first then -- a server that reads no identity: again
         seq:seek("set", 0)
         seq_n = first - 1
         return new_identity()
      end
      seq:close()
      seq = nil
   end
   local user = opts.prefix .. "t" .. thread_id .. "n" .. sent
   local hdr
   if opts.auth == "token" then
      signed_live = signed_live + 1
      hdr = "Authorization: Bearer " .. token(user) .. "\r\n"
   else
      hdr = "X-User-Id: " .. user .. "\r\n"
   end
   if opts.xff then hdr = hdr .. xff_of(thread_id * 4194304 + sent) end
   return hdr, user
end

-- users 1..users: their header lines (and ids, XFF lines when needed), built once
local function random_users()
   local token_of
   if opts.auth == "token" and opts.pool then
      local f = assert(io.open(opts.pool, "rb"))
      local u = 0
      for line in f:lines() do
         u = u + 1
         idents[u] = line
         if u == users then break end
      end
      f:close()
      assert(u == users, "pool " .. opts.pool .. " has fewer than " .. users .. " tokens")
      token_of = function(i) return idents[i] end
   elseif opts.auth == "token" then
      token_of = function(i) return token("u" .. i) end
   end
   if opts.xff and views > 0 then xffs = {} end
   for u = 1, users do
      local hdr
      if token_of then
         hdr = "Authorization: Bearer " .. token_of(u) .. "\r\n"
      else
         hdr = "X-User-Id: u" .. u .. "\r\n"
      end
      if opts.xff then
         local x = xff_of(u)
         hdr = hdr .. x
         if xffs then xffs[u] = x end
      end
      idents[u] = hdr
      if opts.track then names[u] = "u" .. u end
   end
end

function init(args)
   local cpu0 = thread_cpu_us()
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
   view_head = "GET " .. path .. " HTTP/1.1\r\nHost: " .. host .. "\r\n"
   view_req = view_head .. "\r\n"

   if users > 0 then
      random_users()
   elseif opts.pool then
      local per = tonumber(opts.per or "0")
      opts.cycle = opts.cycle == "1"
      seq = io.open(opts.cycle and opts.pool or opts.pool .. thread_id, "rb")
      if seq then seq:setvbuf("full", 65536) end
      seq_n = tonumber(opts.first or "1") + (thread_id - 1) * per - 1
   end
   init_cpu_us = thread_cpu_us() - cpu0
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
      if xffs then return view_head .. xffs[math.random(users)] .. "\r\n" end
      return view_req
   end
   local hdr, user
   if users > 0 then
      local u = math.random(users)
      hdr, user = idents[u], names[u]
   else
      hdr, user = new_identity()
   end
   local i = math.random(#skus)
   if user and opts.track then pending[user] = now_us() end
   return buy_heads[i] .. hdr .. buy_tails[i]
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
   local st, cd, sales, sold, live, init_us = {}, {}, {}, 0, 0, 0
   for _, t in ipairs(threads) do
      sold = sold + (t:get("orders") or 0)
      live = live + (t:get("signed_live") or 0)
      init_us = init_us + (t:get("init_cpu_us") or 0)
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
      signed_live = live,
      init_cpu_us = init_us,
   }
   io.write("BENCH_JSON " .. encode(out) .. "\n")
end
