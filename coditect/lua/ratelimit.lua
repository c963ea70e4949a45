-- Shared rate limits (GCRA with reservations) and cooldowns; see coditect/llm/limits.py.
-- Times are the server's clock in microseconds, so worker clocks do not matter. A limit key is a hash:
-- t, the theoretical arrival time (TAT) of its next unit; s, the start of the latest call charged on
-- it; e, where that call's own charge ends. A call may start once every TAT it is charged on has passed
-- (no burst beyond one call), and then pushes each by its cost.
-- A correction never moves a TAT before e, the end of the latest call's own charge: so consecutive
-- calls stay at least their charged cost apart, and tokens sent in any interval stay within the
-- limit for that interval plus one call. An earlier call's over-estimate is given back only down to e.
--
-- reserve: KEYS cooldown, limit...; ARGV 'reserve', horizon us, cost us per limit key.
--   The earliest start is the latest of now, the cooldown and every TAT. Within the horizon the call
--   is charged at that start; beyond it nothing changes. Returns {granted 0/1, start - now, start}.
-- settle: KEYS limit...; ARGV 'settle', the call's start us, then a correction us per key (signed).
--   Returns the keys corrected.
-- cool: KEYS cooldown; ARGV 'cool', duration us. A longer cooldown wins. Returns its end.
-- cooling: KEYS cooldown; ARGV 'cooling'. Returns the microseconds the cooldown has left (0: none).
local op = ARGV[1]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

-- Integers stay exact up to 2^53 us (285 years); format them without Lua's 14-digit rounding.
local function us(value)
  return string.format('%.0f', value)
end

local function expire_after(key, until_us, grace_ms)
  redis.call('PEXPIRE', key, math.max(math.ceil((until_us - now) / 1000) + grace_ms, 1))
end

if op == 'reserve' then
  local start = math.max(now, tonumber(redis.call('GET', KEYS[1]) or 0))
  for i = 2, #KEYS do
    start = math.max(start, tonumber(redis.call('HGET', KEYS[i], 't') or 0))
  end
  if start - now > tonumber(ARGV[2]) then
    return {0, start - now, start}
  end
  for i = 2, #KEYS do
    local cost = tonumber(ARGV[i + 1])
    if cost > 0 then
      redis.call('HSET', KEYS[i], 't', us(start + cost), 's', us(start), 'e', us(start + cost))
      expire_after(KEYS[i], start + cost, LIMIT_GRACE_MS)
    end
  end
  return {1, start - now, start}
elseif op == 'settle' then
  local started = tonumber(ARGV[2])
  local corrected = 0
  for i = 1, #KEYS do
    local state = redis.call('HMGET', KEYS[i], 't', 's', 'e')
    -- A key gone is a TAT long past: a minute's refill has absorbed the correction.
    if state[1] then
      local delta = tonumber(ARGV[i + 2])
      local tat, floor = tonumber(state[1]) + delta, tonumber(state[3])
      if tonumber(state[2]) == started then
        -- the latest call itself: its own charge moves too
        floor = floor + delta
        redis.call('HSET', KEYS[i], 'e', us(floor))
      end
      tat = math.max(tat, floor)
      if tat > now then
        redis.call('HSET', KEYS[i], 't', us(tat))
        expire_after(KEYS[i], tat, LIMIT_GRACE_MS)
      else
        redis.call('DEL', KEYS[i])
      end
      corrected = corrected + 1
    end
  end
  return corrected
elseif op == 'cool' then
  local until_us = math.max(now + tonumber(ARGV[2]), tonumber(redis.call('GET', KEYS[1]) or 0))
  redis.call('SET', KEYS[1], us(until_us))
  expire_after(KEYS[1], until_us, 0)
  return until_us
elseif op == 'cooling' then
  return math.max(tonumber(redis.call('GET', KEYS[1]) or 0) - now, 0)
end
return redis.error_reply('unknown ratelimit operation ' .. tostring(op))
