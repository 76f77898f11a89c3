-- wrk script for scripts/pgo-build.sh: HMAC-signed ACS calls, as an SDK with an access key
-- sends them, so that the gateway's verify and re-sign path is trained too. wrk has no HMAC:
-- the caller signs each request once and passes it after `--`, four arguments per request:
-- METHOD PATH BODY HEADERS, where HEADERS is the signed headers' lines ("name: value", split
-- by "|"). The signatures hold for the gateway's date window (15 minutes).
--
-- request() and done() are mix.lua's: the requests are pushed into its list, and the result is
-- the same @@RESULT line.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "mix.lua")

function init(args)
  for k = 1, #args - 3, 4 do
    local method, path, body = args[k], args[k + 1], args[k + 2]
    local h = { ["Content-Type"] = "application/json" }
    for line in args[k + 3]:gmatch("[^|]+") do
      local name, value = line:match("^([^:]+): (.*)$")
      h[name] = value
    end
    push(wrk.format(method, path, h, body ~= "" and body or nil))
  end
end
