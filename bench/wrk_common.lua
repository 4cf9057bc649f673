-- What the wrk scripts of bench/tenants.py and bench/limits_ab.py share: sending a pool of
-- prepared requests in turn, and the "BENCH_JSON {...}" line bench/loadgen.py reads (the fields
-- of bench/post_messages.lua's, with the 95th percentile too). Loaded with dofile() from the
-- script's own folder.

pool = {}
next_request = 0

function request()
  next_request = next_request % #pool + 1
  return pool[next_request]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"duration_us": %d, "requests": %d, "status_errors": %d, "connect_errors": %d, '
      .. '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, '
      .. '"p95_us": %d, "p99_us": %d}\n',
    summary.duration, summary.requests, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(95), latency:percentile(99)))
end
