-- wrk script for bench/sms_acks.py: each thread sends its own file of pre-signed raw HTTP
-- requests (one X-Webhook-ID each) in order, once; after the last one it starts over and counts
-- the wrap (those repeats are duplicates, acknowledged without a new claim).
-- Arguments (after --): <path prefix> ; thread i reads <prefix><i>.bin, requests separated by \0.

local threads = {}
local count = 0

function setup(thread)
  thread:set("tid", count)
  count = count + 1
  table.insert(threads, thread)
end

function init(args)
  local f = assert(io.open(args[1] .. tid .. ".bin", "rb"))
  local data = f:read("*a")
  f:close()
  reqs = {}
  for req in string.gmatch(data, "([^%z]+)%z") do
    reqs[#reqs + 1] = req
  end
  data = nil
  idx = 0
  wraps = 0
  sent = 0
  bad = 0
  ok = 0
end

function request()
  idx = idx + 1
  if idx > #reqs then
    idx = 1
    wraps = wraps + 1
  end
  sent = sent + 1
  return reqs[idx]
end

function response(status, headers, body)
  if status == 200 and string.find(body, '"ok":true', 1, true) then
    ok = ok + 1
  else
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local ok_total, bad_total, sent_total, wraps_total, loaded = 0, 0, 0, 0, 0
  for _, t in ipairs(threads) do
    ok_total = ok_total + t:get("ok")
    bad_total = bad_total + t:get("bad")
    sent_total = sent_total + t:get("sent")
    wraps_total = wraps_total + t:get("wraps")
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"duration_us":%d,"requests":%d,"ok":%d,"bad":%d,"sent":%d,"wraps":%d,' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,' ..
    '"timeouts":%d,"lat_p50_us":%d,"lat_p90_us":%d,"lat_p99_us":%d,"lat_max_us":%d,' ..
    '"lat_mean_us":%.1f}\n',
    summary.duration, summary.requests, ok_total, bad_total, sent_total, wraps_total,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
