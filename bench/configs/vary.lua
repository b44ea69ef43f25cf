-- wrk -s vary.lua: each request differs from the one before it (bench/run's "varied requests"
-- row). wrk alone sends one byte-identical request over and over; real clients do not, and a
-- proxy may remember a repeated head. A counter goes in the query (the origins' `location =`
-- ignores it) and in a header, so no two consecutive requests on a connection are the same.
local n = 0

request = function()
  n = n + 1
  wrk.headers["X-Request-Id"] = tostring(n)
  return wrk.format(nil, wrk.path .. "?n=" .. n)
end
