-- wrk script: POST messages to the chats of one application at a modest, paced rate.
--
--   wrk -t1 -c2 -d10s -s bench/paced_messages.lua http://127.0.0.1:PORT -- TOKEN CHATS DELAY_MS
--
-- The "second tenant" of bench/tenants.py: each connection waits DELAY_MS after an answer
-- before its next request (wrk's delay()), so C connections send about C * 1000 / (DELAY_MS +
-- latency) requests a second, whatever the server does to the other tenant.

dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "wrk_common.lua")

local pace_ms = 0

function init(args)
  local token, chats = args[1], tonumber(args[2])
  pace_ms = tonumber(args[3])
  assert(token and chats and pace_ms, "usage: -- TOKEN CHATS DELAY_MS")
  local headers = { ["Content-Type"] = "application/json" }
  for i = 1, 100 do
    local path = "/applications/" .. token .. "/chats/" .. (i % chats + 1) .. "/messages"
    pool[i] = wrk.format("POST", path, headers, '{"content": "paced tenant message ' .. i .. '"}')
  end
end

function delay()
  return pace_ms
end
