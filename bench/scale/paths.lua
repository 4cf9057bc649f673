-- wrk script: GET a list of paths in turn, and print latency percentiles as one JSON line.
--
--   wrk -t1 -c4 -d5s -s bench/scale/paths.lua http://127.0.0.1:PORT -- PATHS_FILE
--
-- PATHS_FILE holds one request path per line (a query kind's instances: different chats,
-- words or pages), so a measurement is not one cached answer repeated. Each thread reads the
-- file once in init() and cycles through it from its own starting point.
--
-- done() prints "BENCH_JSON {...}": totals, error counts (status: responses of 400 and above)
-- and p50/p95/p99 in microseconds, for bench/scale/measure.py.

local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_id", thread_count)
end

function init(args)
  local file = assert(io.open(args[1], "r"), "usage: -- PATHS_FILE")
  pool = {}
  for line in file:lines() do
    if #line > 0 then
      table.insert(pool, wrk.format("GET", line))
    end
  end
  file:close()
  assert(#pool > 0, "no paths in " .. args[1])
  next_request = (thread_id * 7) % #pool
end

function request()
  next_request = next_request % #pool + 1
  return pool[next_request]
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_JSON {"duration_us": %d, "requests": %d, "status_errors": %d, "socket_errors": %d,'
      .. ' "p50_us": %d, "p95_us": %d, "p99_us": %d}\n',
    summary.duration, summary.requests, errors.status,
    errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
