-- policy.lua: JWT authentication for chatgw (docs/examples/auth/README.md explains it).
--
-- Every WebSocket must carry an HS256 JWT, either in the URL (?token=<JWT>) or as one entry of
-- the Sec-WebSocket-Protocol header (a browser passes `new WebSocket(url, ["chatgw.v1", jwt])`;
-- chatgw answers with chatgw.v1 and the token never reaches a URL log). on_connect checks it
-- with gw.jwt_verify before the upgrade; a refusal is the HTTP answer
--   403 {"error":"forbidden","message":"<reason>"}
-- with reason missing_token, malformed, unsupported_alg, bad_signature, expired,
-- not_yet_valid, no_expiry, bad_audience or bad_issuer.
--
-- An optional `rooms` claim (a room name, or a list of names; "*" allows any) limits what the
-- holder may join; a join outside it gets an error frame with code forbidden.
--
-- This directory is self-contained: it does not use the default policy's modules. Copy it as
-- the scripts directory (or a ConfigMap), and put the real secret in secrets.lua (from a
-- Kubernetes Secret, see the README):  return { secret = "..." }
-- Sandbox: only string, table, math, utf8, os.time/clock/date, pcall/error/assert and gw.*.

local settings = {
  -- The HS256 key shared with whatever issues the tokens. This placeholder only lets the
  -- example load; self_test logs a warning while it is in use. Use 32 random bytes or more.
  secret = "change-me-to-a-long-random-secret-from-secrets-lua",
  previous_secret = false,   -- during a key rotation: the old key, still accepted; false when none
  query_param = "token",     -- ?token=<JWT>; false ignores the URL
  subprotocol = true,        -- Sec-WebSocket-Protocol: chatgw.v1, <JWT>; false ignores the header
  require_exp = true,        -- refuse tokens without an exp claim (tokens that never expire)
  audience = false,          -- when a string, the aud claim must equal it (or list it)
  issuer = false,            -- when a string, the iss claim must equal it
  max_session = 86400,       -- seconds the claims are kept for joins when the token has no exp
}

-- secrets.lua, when present, overrides any of the keys above.
local has_secrets, secrets = pcall(require, "secrets")
if has_secrets and type(secrets) == "table" then
  for k, v in pairs(secrets) do settings[k] = v end
end

local PLACEHOLDER = "change-me-to-a-long-random-secret-from-secrets-lua"
local JWT_SHAPE = "^[%w_%-]+%.[%w_%-]+%.[%w_%-]*$"   -- three base64url segments
local MAX_TOKEN = 4096

-- The token of a connection and where it came from, or nil.
local function token_of(conn)
  if settings.query_param and type(conn.query) == "table" then
    local t = conn.query[settings.query_param]
    if type(t) == "string" and t ~= "" then return t, "query" end
  end
  if settings.subprotocol and type(conn.headers) == "table" then
    local h = conn.headers["sec-websocket-protocol"]   -- header names arrive lower-case
    if type(h) == "string" and #h <= MAX_TOKEN then
      for item in string.gmatch(h, "[^,%s]+") do
        if string.find(item, JWT_SHAPE) then return item, "subprotocol" end
      end
    end
  end
  return nil
end

local function listed(v, want)
  if v == want then return true end
  if type(v) == "table" then
    for _, x in ipairs(v) do if x == want then return true end end
  end
  return false
end

-- The rooms claim as a "\n"-joined string for gw.store ("*" = any room).
local function rooms_of(claims)
  local r = claims.rooms
  if r == nil then return "*" end
  if type(r) == "string" then return r end
  if type(r) ~= "table" then return "" end
  local out = {}
  for _, name in ipairs(r) do
    if type(name) == "string" then out[#out + 1] = name end
  end
  return table.concat(out, "\n")
end

local function auth_key(conn) return "auth:" .. conn.id end

-- Checks a token; returns the claims, or nil and the refusal reason.
local function check(token)
  if #token > MAX_TOKEN then return nil, "malformed" end
  local claims, why = gw.jwt_verify(token, settings.secret)   -- signature, exp and nbf
  if not claims and why == "bad_signature" and settings.previous_secret then
    claims, why = gw.jwt_verify(token, settings.previous_secret)
  end
  if not claims then return nil, why end
  if settings.require_exp and type(claims.exp) ~= "number" then return nil, "no_expiry" end
  if settings.audience and not listed(claims.aud, settings.audience) then return nil, "bad_audience" end
  if settings.issuer and claims.iss ~= settings.issuer then return nil, "bad_issuer" end
  return claims
end

local policy = {}

function policy.on_connect(conn)
  local token = token_of(conn)
  if not token then return false, "missing_token" end
  local claims, why = check(token)
  if not claims then
    gw.log("info", "auth refused", { ip = conn.ip, reason = why })
    return false, why
  end
  -- keep what on_join needs until the token expires (the URL room is joined right after this)
  local ttl = settings.max_session
  if type(claims.exp) == "number" then ttl = math.max(1, math.min(ttl, math.ceil(claims.exp - gw.now()))) end
  gw.store.set(auth_key(conn), rooms_of(claims), ttl)
  return true
end

function policy.on_join(conn, room)
  local allowed = gw.store.get(auth_key(conn))
  if type(allowed) ~= "string" then return false, "forbidden" end   -- expired since the connect
  for name in string.gmatch(allowed, "[^\n]+") do
    if name == "*" or name == room then return true end
  end
  return false, "forbidden"
end

function policy.self_test()
  assert(type(settings.secret) == "string" and #settings.secret >= 16,
    "settings.secret must be a string of at least 16 bytes (use 32 random bytes or more)")
  assert(settings.previous_secret == false or (type(settings.previous_secret) == "string" and #settings.previous_secret >= 16),
    "settings.previous_secret: false, or the old key (16 bytes or more)")
  assert(settings.query_param == false or type(settings.query_param) == "string", "settings.query_param: a string or false")
  assert(type(settings.subprotocol) == "boolean", "settings.subprotocol: true or false")
  assert(settings.query_param or settings.subprotocol, "no place left to carry a token")
  assert(settings.audience == false or type(settings.audience) == "string", "settings.audience: a string or false")
  assert(settings.issuer == false or type(settings.issuer) == "string", "settings.issuer: a string or false")
  assert(type(settings.max_session) == "number" and settings.max_session > 0, "settings.max_session: seconds > 0")
  -- gw.jwt_verify behaves as this file expects: {"alg":"HS256"}.{"sub":"self-test"} signed
  -- with the key "self-test-key", and the same token with its signature's first byte changed
  local signing = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJzZWxmLXRlc3QifQ"
  local good = signing .. ".bh2XSTkQA53ugyMP_32GCDfvG7zFK_843ltt1RoapxM"
  local claims = gw.jwt_verify(good, "self-test-key")
  assert(claims and claims.sub == "self-test", "gw.jwt_verify rejected a valid token")
  local bad = signing .. ".ch2XSTkQA53ugyMP_32GCDfvG7zFK_843ltt1RoapxM"
  local none, why = gw.jwt_verify(bad, "self-test-key")
  assert(none == nil and why == "bad_signature", "gw.jwt_verify accepted a bad signature")
  if settings.secret == PLACEHOLDER then
    gw.log("warn", "auth example: the placeholder secret is in use; set secret in secrets.lua", {})
  end
end

return policy
