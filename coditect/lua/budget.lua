-- ARGV: now ms, batch id, task id, estimated cost USD, estimated tokens.
-- Before a task of a batch with a budget starts: reserve its estimate against the budget.
-- Returns {1}: reserved (a reservation this task holds already, from an attempt whose worker died, is
--   kept, not added twice);
--   {0, spent usd, budget usd, spent tokens, budget tokens}: the budget is spent; the batch is marked
--   so that nothing more of it is enqueued, and this task must end cancelled;
--   {-1}: what is spent and reserved leaves no room for this estimate yet: try again when the tasks
--   running now have settled (nothing reserved).
local meta = BATCH .. ARGV[2]
local reserved = BATCH .. ARGV[2] .. ':reserved'
if redis.call('HEXISTS', reserved, ARGV[3]) == 1 then return {1} end
local v = redis.call('HMGET', meta, 'budget_usd', 'budget_tokens', 'cost', 'in', 'out', 'cache_read',
  'cache_write', 'reserved_usd', 'reserved_tokens')
local budget_usd, budget_tokens = tonumber(v[1]), tonumber(v[2])
local spent_usd = tonumber(v[3]) or 0
local spent_tokens = (tonumber(v[4]) or 0) + (tonumber(v[5]) or 0) + (tonumber(v[6]) or 0) + (tonumber(v[7]) or 0)
local held_usd, held_tokens = tonumber(v[8]) or 0, tonumber(v[9]) or 0
local est_usd, est_tokens = tonumber(ARGV[4]), tonumber(ARGV[5])
-- Dollars as coditect.cli.render.format_usd writes them (at least `digits` significant digits, and
-- cents; no thousands separator).
local function usd(value, digits)
  local places = 2
  -- (the epsilon: log(1000) / log(10) is 2.9999999999999996)
  if value > 0 then places = math.max(2, digits - 1 - math.floor(math.log(value) / math.log(10) + 1e-9)) end
  return string.format('$%.' .. places .. 'f', value)
end
-- Spent and budget with enough digits to read apart when they differ ($0.000430 of $0.000400).
local function spent_of_budget(a, b)
  local digits = 3
  while digits < 15 and a ~= b and usd(a, digits) == usd(b, digits) do digits = digits + 1 end
  return usd(a, digits) .. ' of ' .. usd(b, digits)
end
local function spent()
  local reason = 'budget exhausted: ' .. spent_of_budget(spent_usd, budget_usd or 0) .. ' spent'
  if budget_tokens and spent_tokens >= budget_tokens then
    reason = string.format('budget exhausted: %d of %d tokens spent', spent_tokens, budget_tokens)
  end
  redis.call('HSETNX', meta, 'cancelled', reason)
  return {0, tostring(spent_usd), tostring(budget_usd or ''), spent_tokens, budget_tokens or -1}
end
if budget_usd and spent_usd >= budget_usd then return spent() end
if budget_tokens and spent_tokens >= budget_tokens then return spent() end
if (budget_usd and spent_usd + held_usd + est_usd > budget_usd)
    or (budget_tokens and spent_tokens + held_tokens + est_tokens > budget_tokens) then
  if held_usd > 0 or held_tokens > 0 then return {-1} end
end
redis.call('HSET', reserved, ARGV[3], ARGV[4] .. ' ' .. ARGV[5])
redis.call('HINCRBYFLOAT', meta, 'reserved_usd', est_usd)
redis.call('HINCRBY', meta, 'reserved_tokens', est_tokens)
redis.call('PEXPIRE', reserved, RUNNING_TTL_MS)
return {1}
