-- wrk script for bench/run.ts: after the run, print one machine-readable line so the driver
-- reads exact figures instead of parsing wrk's rounded, unit-suffixed human output.
-- Latencies are in microseconds. Only `done` is defined: a `response` callback would make wrk
-- parse every response in Lua and slow the client down, which would cap the server's figures.
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(99), latency.max,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout))
end
