-- wrk script: POST messages spread over the chats of one application.
--
--   wrk -t1 -c64 -d10s -s bench/post_messages.lua http://127.0.0.1:PORT -- TOKEN CHATS WORD
--
-- TOKEN: the application token; CHATS: messages go to chats 1..CHATS in turn; WORD: a word every
-- message contains, so that the benchmark can count the searchable messages of a chat with one
-- search. The rest of each body is a few words drawn from a small vocabulary plus a number, so
-- the search index sees varied documents rather than one repeated string.
--
-- Each thread builds a pool of requests once in init() and cycles through it: wrk then spends no
-- Lua time formatting requests during the run (the client shares the cores with the server, and
-- every cycle it spends is one the server does not get).
--
-- done() prints one line "BENCH_JSON {...}" with the totals, the error counts (status: responses
-- of 400 and above, which wrk does not count as errors in its "Requests/sec") and latency
-- percentiles in microseconds, for bench/loadgen.py to parse.

local VOCABULARY = {
  "hello", "world", "meeting", "tomorrow", "coffee", "deploy", "release", "question", "answer",
  "lunch", "project", "review", "ticket", "server", "client", "weekend", "holiday", "invoice",
  "payment", "shipping", "order", "delivery", "window", "garden", "music", "concert", "travel",
  "flight", "hotel", "booking", "report", "budget", "design", "sketch", "draft", "final",
  "urgent", "later", "thanks", "welcome", "morning", "evening", "market", "support",
}
local POOL_SIZE = 1000

local thread_count = 0
local threads = {}

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_id", thread_count)
  table.insert(threads, thread)
end

function init(args)
  local token, chats, word = args[1], tonumber(args[2]), args[3]
  assert(token and chats and word, "usage: -- TOKEN CHATS WORD")
  math.randomseed(thread_id * 7919)
  local headers = { ["Content-Type"] = "application/json" }
  pool = {}
  for i = 1, POOL_SIZE do
    -- Threads start at different chats so that, between them, every chat gets the same share.
    local chat = (i + thread_id) % chats + 1
    local words = { word }
    for _ = 1, math.random(3, 8) do
      table.insert(words, VOCABULARY[math.random(#VOCABULARY)])
    end
    table.insert(words, tostring(thread_id * POOL_SIZE + i))
    local body = '{"content": "' .. table.concat(words, " ") .. '"}'
    local path = "/applications/" .. token .. "/chats/" .. chat .. "/messages"
    pool[i] = wrk.format("POST", path, headers, body)
  end
  next_request = 0
end

function request()
  next_request = next_request % POOL_SIZE + 1
  return pool[next_request]
end

function done(summary, latency, requests)
  local e = summary.errors
  local fields = {
    string.format('"duration_us": %d', summary.duration),
    string.format('"requests": %d', summary.requests),
    string.format('"bytes": %d', summary.bytes),
    string.format('"connect_errors": %d', e.connect),
    string.format('"read_errors": %d', e.read),
    string.format('"write_errors": %d', e.write),
    string.format('"status_errors": %d', e.status),
    string.format('"timeouts": %d', e.timeout),
    string.format('"latency_mean_us": %f', latency.mean),
    string.format('"latency_max_us": %d', latency.max),
  }
  for _, p in ipairs({ 50, 90, 99, 99.9 }) do
    table.insert(fields, string.format('"p%s_us": %d', tostring(p), latency:percentile(p)))
  end
  io.write("BENCH_JSON {" .. table.concat(fields, ", ") .. "}\n")
end
