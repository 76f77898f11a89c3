-- wrk script: a realistic ACS request mix, pre-formatted in init() so each request costs the
-- load generator one table lookup (the same for every target).
--
-- Per cycle of 10: 3 send chat message (POST, ~200-byte JSON), 2 list chat messages, 2 create
-- identity (POST), 1 get room, 1 get router job, 1 unknown route. Three thread ids, two rooms,
-- two jobs; every request carries a bearer token, an SDK user agent and a client request id.
--
-- Arguments after `--`: `rate=N conns=C` paces the run to about N req/s in total: each
-- connection waits C*1000/N ms (+-50% jitter) before each request (wrk's delay()). That is a
-- closed loop with think time, not an open-loop generator: at 2,000 req/s and 64 connections
-- the think time (32 ms) dwarfs the latencies measured (<1 ms), so coordinated omission only
-- matters for stalls longer than that.
--
-- done() prints one line starting with "@@RESULT" for bench/run.sh.

local reqs, n, i = {}, 0, 0

local token = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjVFODQ4MjE0Qzc3MDczQUU1QzJCREU1Q0NENTQ0ODlEREYyQzRDODQiLCJ4NXQiOiJYb1NDRk1kd2M2NWNLOTVjelZSSW5kOHNUSVEiLCJ0eXAiOiJKV1QifQ.eyJza3lwZWlkIjoiYWNzOmJlbmNoIiwic2NwIjoxNzkyLCJjc2kiOiIxNzAwMDAwMDAwIiwiZXhwIjoxNzAwMDg2NDAwfQ.c2lnbmF0dXJlLXBsYWNlaG9sZGVyLWZvci1iZW5jaG1hcmtpbmctb25seQ"
local msg_body = '{"content":"Hello team, the quarterly review deck is uploaded to the shared drive; please add comments before Friday.","senderDisplayName":"Bench User","type":"text","metadata":{"priority":"normal"}}'
local ident_body = '{"createTokenWithScopes":["chat","voip"],"expiresInMinutes":60}'

-- push(request): appends a request formatted by wrk.format to those request() cycles through
-- (signed.lua pushes its own).
function push(request)
  n = n + 1
  reqs[n] = request
end

local function add(method, path, body)
  local h = {
    ["Authorization"] = "Bearer " .. token,
    ["User-Agent"] = "azsdk-js-communication-chat/1.5.0 core-rest-pipeline/1.12.0 Node/v20.10.0 OS/(x64-Linux-6.1)",
    ["x-ms-client-request-id"] = "8f6c2b1e-3d4a-4c5b-9e7f-0a1b2c3d4e5f",
    ["Accept"] = "application/json",
  }
  if body then h["Content-Type"] = "application/json" end
  push(wrk.format(method, path, h, body))
end

function init(args)
  local rate, conns
  for _, a in ipairs(args) do
    local k, v = a:match("^(%w+)=(.*)$")
    if k == "rate" then rate = tonumber(v) end
    if k == "conns" then conns = tonumber(v) end
  end
  if rate and rate > 0 then
    local ms = math.max(2, math.floor((conns or 64) * 1000 / rate))
    -- defined only when pacing: wrk arms a timer per request only if delay() exists
    delay = function() return math.random(math.floor(ms / 2), math.floor(ms * 3 / 2)) end
  end
  local threads = { "19:abc@thread.v2", "19:meeting_MjA4NjQ@thread.v2", "19:b2d2c3@thread.v2" }
  local rooms, jobs = { "99413", "99414" }, { "job-1", "job-2a7f" }
  for t = 1, 3 do
    local msgs = "/chat/threads/" .. threads[t] .. "/messages?api-version=2021-09-07"
    add("POST", msgs, msg_body)
    add("GET", msgs .. "&maxPageSize=20")
    add("POST", msgs, msg_body)
    add("POST", "/identities?api-version=2023-10-01", ident_body)
    add("GET", "/rooms/" .. rooms[(t % 2) + 1] .. "?api-version=2023-06-14")
    add("POST", msgs, msg_body)
    add("GET", "/routing/jobs/" .. jobs[(t % 2) + 1] .. "?api-version=2023-11-01")
    add("GET", msgs)
    add("POST", "/identities?api-version=2023-10-01", ident_body)
    add("GET", "/unknown/things/" .. t .. "?api-version=2020-01-01")
  end
end

function request()
  i = i % n + 1
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "@@RESULT requests=%d rps=%.1f p50_us=%d p99_us=%d non2xx=%d sockerr=%d\n",
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
