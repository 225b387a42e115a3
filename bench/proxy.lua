-- proxy.lua - make wrk talk to an HTTP forward proxy.
--
-- wrk connects to the host:port in its URL argument (the proxy) and sends
-- whatever request the script builds. We send absolute-form requests, as a
-- client configured with http_proxy does:
--
--   GET http://127.0.0.1:ORIGINPORT/100b HTTP/1.1
--   Host: 127.0.0.1:ORIGINPORT
--
-- Usage: BENCH_TARGET=http://127.0.0.1:8080/100b wrk -s proxy.lua http://127.0.0.1:PROXYPORT/
--
-- The request is built once at load time and kept static (no per-request Lua
-- call), so wrk's own cost is the same as for a plain origin-form run.

local target = os.getenv("BENCH_TARGET")
if not target then
   error("proxy.lua: set BENCH_TARGET to an absolute http:// URL")
end
local hostport = target:match("^http://([^/]+)")
if not hostport then
   error("proxy.lua: BENCH_TARGET must look like http://host:port/path")
end

wrk.method = "GET"
wrk.path = target
wrk.headers["Host"] = hostport
