-- wrk script for bench/bootstrap-http.sh: the C SDK's bootstrap request for a random device of
-- the edge_load fleet (about 5 % unknown), forwarded by a trusted proxy for clients on several
-- continents. The same script drives the bare hyper peer, so both pay the same client cost.
local devices = tonumber(os.getenv("DEVICES") or "100000")
local clients = {
  "81.2.69.160",     -- London
  "80.156.0.1",      -- Germany
  "8.8.8.8",         -- USA
  "202.96.209.133",  -- Shanghai
  "1.0.0.1",         -- Australia
  "200.160.2.3",     -- Brazil
  "2003::1",         -- Germany, IPv6
  "10.20.30.40",     -- private: default region
}

request = function()
  local i = math.random(0, math.floor(devices * 1.05) - 1)
  local pk = string.format("loadtest%03d", i % 10)
  local dn = string.format("dev-%06d", i)
  local body = "productKey=" .. pk .. "&deviceName=" .. dn .. "&clientId=" .. pk .. "." .. dn ..
    "&timestamp=2524608000000&resources=mqtt"
  local headers = {
    ["Host"] = "iot-auth-global.example.com",
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["X-Forwarded-For"] = clients[math.random(#clients)],
  }
  return wrk.format("POST", "/auth/bootstrap", headers, body)
end
