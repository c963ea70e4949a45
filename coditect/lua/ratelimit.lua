-- Shared rate limits (GCRA with reservations) and cooldowns; see coditect/llm/limits.py.
-- Times are the server's clock in microseconds, so worker clocks do not matter. A limit key holds the
-- theoretical arrival time (TAT) of its next unit: a call may start once every TAT it is charged on
-- has passed (no burst beyond one call), and then pushes each by its cost.
--
-- reserve: KEYS cooldown, tat...; ARGV 'reserve', horizon us, cost us per tat key.
--   The earliest start is the latest of now, the cooldown and every TAT. Within the horizon the call
--   is charged at that start; beyond it nothing changes. Returns {granted 0/1, start - now, start}.
-- settle: KEYS tat...; ARGV 'settle', correction us per key (signed). Returns the keys corrected.
-- cool: KEYS cooldown; ARGV 'cool', duration us. A longer cooldown wins. Returns its end.
-- cooling: KEYS cooldown; ARGV 'cooling'. Returns the microseconds the cooldown has left (0: none).
local op = ARGV[1]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

local function stored(key)
  return tonumber(redis.call('GET', key) or 0)
end

-- Integers stay exact up to 2^53 us (285 years); format them without Lua's 14-digit rounding.
local function keep(key, until_us, grace_ms)
  local ttl = math.ceil((until_us - now) / 1000) + grace_ms
  redis.call('SET', key, string.format('%.0f', until_us), 'PX', math.max(ttl, 1))
end

if op == 'reserve' then
  local start = math.max(now, stored(KEYS[1]))
  for i = 2, #KEYS do
    start = math.max(start, stored(KEYS[i]))
  end
  if start - now > tonumber(ARGV[2]) then
    return {0, start - now, start}
  end
  for i = 2, #KEYS do
    local cost = tonumber(ARGV[i + 1])
    if cost > 0 then
      keep(KEYS[i], start + cost, LIMIT_GRACE_MS)
    end
  end
  return {1, start - now, start}
elseif op == 'settle' then
  local corrected = 0
  for i = 1, #KEYS do
    local tat = redis.call('GET', KEYS[i])
    -- A key gone is a TAT long past: a minute's refill has absorbed the correction.
    if tat then
      local moved = tonumber(tat) + tonumber(ARGV[i + 1])
      if moved > now then
        keep(KEYS[i], moved, LIMIT_GRACE_MS)
      else
        redis.call('DEL', KEYS[i])
      end
      corrected = corrected + 1
    end
  end
  return corrected
elseif op == 'cool' then
  local until_us = math.max(now + tonumber(ARGV[2]), stored(KEYS[1]))
  keep(KEYS[1], until_us, 0)
  return until_us
elseif op == 'cooling' then
  return math.max(stored(KEYS[1]) - now, 0)
end
return redis.error_reply('unknown ratelimit operation ' .. tostring(op))
