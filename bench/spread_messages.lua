-- wrk script: POST messages spread over many applications, one chat each, in turn.
--
--   wrk -t1 -c64 -d10s -s bench/spread_messages.lua http://127.0.0.1:PORT -- TOKEN,TOKEN,...
--
-- Many tenants each at a modest rate (bench/limits_ab.py): what the rate limits cost when no
-- bucket is busy enough for an api process to lease many tokens ahead from Redis.

dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "wrk_common.lua")

function init(args)
  local headers = { ["Content-Type"] = "application/json" }
  for token in string.gmatch(args[1], "[^,]+") do
    local path = "/applications/" .. token .. "/chats/1/messages"
    table.insert(pool, wrk.format("POST", path, headers, '{"content": "spread benchword ' .. #pool .. '"}'))
  end
  assert(#pool > 0, "usage: -- TOKEN,TOKEN,...")
end
