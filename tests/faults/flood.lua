-- wrk script: a flood of message creations, each answer's status counted.
--
--   wrk -t2 -c1000 -d10s --timeout 12s -s tests/faults/flood.lua http://127.0.0.1:PORT -- TOKEN CHAT DELAY_MS LATE_US
--
-- Every request POSTs a message to chat CHAT of application TOKEN. With DELAY_MS > 0 each
-- connection waits that long before each request, so c connections offer about c * 1000 / DELAY_MS
-- requests a second while the answers are fast (and keep that many waiting when they are not).
-- done() prints one line "FLOOD_JSON {...}": answers per status class, wrk's socket errors, the
-- slowest answer and "late": the answers that took more than LATE_US microseconds, found in wrk's
-- latency statistics by bisecting the percentile where LATE_US falls (wrk keeps answers up to
-- --timeout in them, so --timeout must be well above LATE_US). Not wrk's own "timeout" count: that
-- one counts, at every 2 s check, each connection whose *last request* was written longer than
-- --timeout ago, answered or not (an idle or not yet connected connection too, again and again).

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

function init(args)
  local token, chat = args[1], args[2]
  delay_ms = tonumber(args[3] or "0")
  late_us = tonumber(args[4] or "6000000")
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
  -- done() runs in wrk's main Lua state: init()'s globals are read from a thread's.
  local late_us, answers, late = threads[1]:get("late_us"), #latency, 0
  if answers > 0 and latency.max > late_us then
    local low, high = 0.0, 100.0 -- high: a percentile above LATE_US
    for _ = 1, 50 do
      local middle = (low + high) / 2
      if latency:percentile(middle) > late_us then high = middle else low = middle end
    end
    late = math.max(1, math.floor(answers * (100 - high) / 100 + 0.5))
  end
  local e = summary.errors
  io.write(string.format(
    'FLOOD_JSON {"duration_us": %d, "requests": %d, "s201": %d, "s503": %d, "s500": %d, "sother": %d, '
      .. '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, '
      .. '"latency_max_us": %d, "p99_us": %d, "late": %d}\n',
    summary.duration, summary.requests, t.s201, t.s503, t.s500, t.sother,
    e.connect, e.read, e.write, e.timeout, latency.max, latency:percentile(99), late
  ))
end
