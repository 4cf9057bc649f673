-- wrk script: a flood of message creations, each answer's status counted.
--
--   wrk -t2 -c1000 -d10s --timeout 6s -s tests/faults/flood.lua http://127.0.0.1:PORT -- TOKEN CHAT DELAY_MS
--
-- Every request POSTs a message to chat CHAT of application TOKEN. With DELAY_MS > 0 each
-- connection waits that long before each request, so c connections offer about c * 1000 / DELAY_MS
-- requests a second while the answers are fast (and keep that many waiting when they are not).
-- done() prints one line "FLOOD_JSON {...}": answers per status class, wrk's socket errors
-- (timeouts: requests with no answer within --timeout) and the slowest answer, for
-- tests/faults/flood.py.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

function init(args)
  local token, chat = args[1], args[2]
  delay_ms = tonumber(args[3] or "0")
  path = "/applications/" .. token .. "/chats/" .. chat .. "/messages"
  headers = { ["Content-Type"] = "application/json" }
  sent = 0
  s201, s503, s500, sother = 0, 0, 0, 0
end

function request()
  sent = sent + 1
  local body = '{"content": "flood ' .. id .. " " .. sent .. '"}'
  return wrk.format("POST", path, headers, body)
end

function delay()
  return delay_ms
end

function response(status, headers, body)
  if status == 201 then
    s201 = s201 + 1
  elseif status == 503 then
    s503 = s503 + 1
  elseif status >= 500 then
    s500 = s500 + 1
  else
    sother = sother + 1
  end
end

function done(summary, latency, requests)
  local t = { s201 = 0, s503 = 0, s500 = 0, sother = 0 }
  for _, thread in ipairs(threads) do
    for name, _ in pairs(t) do
      t[name] = t[name] + thread:get(name)
    end
  end
  local e = summary.errors
  io.write(string.format(
    'FLOOD_JSON {"duration_us": %d, "requests": %d, "s201": %d, "s503": %d, "s500": %d, "sother": %d, '
      .. '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, '
      .. '"latency_max_us": %d, "p99_us": %d}\n',
    summary.duration, summary.requests, t.s201, t.s503, t.s500, t.sother,
    e.connect, e.read, e.write, e.timeout, latency.max, latency:percentile(99)
  ))
end
