-- moderation.lua: flood control, text limits, word filter, strikes, kicks and bans.
--
--   moderation.on_connect(conn) -> true, or false + "banned" | "rate_limited"
--     refuses a banned IP or name (case-insensitive) and IPs opening WebSockets too fast.
--   moderation.check(conn, room, msg[, opts]) -> nil (pass; msg.text may have been rewritten
--     and the second result is true when it was), or a drop code. For every type that reaches it:
--       * flood control: gw.limit("conn:<id>") and gw.limit("ip:<ip>")    -> "rate_limited"
--     and for msg/dm text:
--       * more than max_text_chars characters                             -> "too_large"
--       * runs of one character longer than max_char_run are shortened
--       * filtered words (whole words, case-insensitive): masked with word_mask, or the
--         message dropped with "forbidden" when word_action = "drop"
--       * the repeat_limit-th identical text in a row from one connection -> "repeated"
--   Each violation listed in strike_codes (and a masked word when strike_on_mask) adds a
--   strike (gw.store "strikes:<id>", strike_ttl). At max_strikes the connection is kicked
--   (gw.kick(id, "kicked", "too many violations")); kicks_to_ban such kicks of one IP within
--   kick_window seconds ban that IP for ban_seconds.
--   moderation.ban(kind, value, seconds) / unban(kind, value) / banned(kind, value):
--     kind is "ip" or "name"; bans live in gw.store ("ban:ip:<ip>", "ban:name:<name>") with
--     their expiry as TTL, so they survive reloads. Call them from your own hooks.
--   moderation.forget(conn): deletes the connection's strike key ("strikes:<id>") and its
--     repetition record; policy.lua calls it once the connection has left its last room (or
--     disconnected). The key carries a TTL (strike_ttl) for connections that never joined a room.
--   The repetition record (last text, count, time) lives in this VM beside the connection's
--   table, not in gw.store: it goes with the connection, and a reload starts every count over.
--   Pure helpers (used by self_test and specs): filter_words, collapse_runs, normalize.
--
-- Tuned by settings.moderation (see settings.lua for every key).
-- Cost per message: two gw.limit calls, gw.byte_runs (ASCII text; a pattern search otherwise),
-- gw.fold and gw.now, all O(text length); text that needs no rewriting is not copied.

local settings = require "settings"

local M = {}

M.DEFAULTS = {
  conn_rate = 5, conn_burst = 10,
  ip_rate = 20, ip_burst = 40,
  connect_rate = 2, connect_burst = 10,
  max_text_chars = 2000,
  max_char_run = 4,
  repeat_limit = 3,
  repeat_window = 300,
  words = {},
  word_action = "mask",
  word_mask = "***",
  strike_codes = { rate_limited = true, too_large = true, forbidden = true, repeated = true },
  strike_on_mask = true,
  max_strikes = 5,
  strike_ttl = 600,
  kicks_to_ban = 3,
  kick_window = 3600,
  ban_seconds = 600,
}

local cfg
local find, sub, lower, gsub, rep = string.find, string.sub, string.lower, string.gsub, string.rep

function M.configure(overrides)
  local c = {}
  for k, v in pairs(M.DEFAULTS) do c[k] = v end
  for k, v in pairs(settings.moderation or {}) do c[k] = v end
  for k, v in pairs(overrides or {}) do c[k] = v end
  c.word_set = {}
  c.has_words = false
  for _, w in ipairs(c.words or {}) do
    c.word_set[string.lower(w)] = true
    c.has_words = true
  end
  c.strike_codes = c.strike_codes or {}
  cfg = c
  M.cfg = c
  return c
end

-- Text helpers (pure) ---------------------------------------------------------------------

-- A "word": letters, digits, '_' and any non-ASCII byte (so UTF-8 words stay whole).
local WORD = "[%w_\128-\255]+"
-- One UTF-8 character (or one stray byte).
local CHAR = "[\0-\127\194-\244][\128-\191]*"

-- filter_words' replacement function, made once: gsub calls it with each word, and the call's
-- word set, mask and hit count travel in these upvalues (a hook never runs concurrently).
local fw_set, fw_mask, fw_hits
local function fw_replace(w)
  local hit
  if find(w, "%u") then hit = fw_set[lower(w)] else hit = fw_set[w] end  -- no copy when lower
  if hit then
    fw_hits = fw_hits + 1
    return fw_mask
  end
end

-- Returns text with every filtered word replaced by mask, and the number of hits.
function M.filter_words(text, word_set, mask)
  fw_set, fw_mask, fw_hits = word_set or cfg.word_set, mask or cfg.word_mask, 0
  local out = gsub(text, WORD, fw_replace)
  local hits = fw_hits
  fw_set, fw_mask = nil, nil
  return out, hits
end

-- The pattern of a run of one UTF-8 character longer than max, per max (built once).
local char_runs = setmetatable({}, { __index = function(t, max)
  local pat = "(" .. CHAR .. ")" .. rep("%1", max)
  t[max] = pat
  return pat
end })

-- Shortens every run of one character longer than max to max characters. O(#text). ascii
-- (optional) tells that text is ASCII (utf8.len(text) == #text), when the caller knows; ASCII
-- text is cut by gw.byte_runs in C (a run of one character is a run of one byte there; it
-- raises on a max that is no integer, as the pattern's string.rep does).
local gw_byte_runs = gw.byte_runs
function M.collapse_runs(text, max, ascii)
  if not max or max < 1 or #text <= max then return text end
  if ascii == nil then ascii = utf8.len(text) == #text end
  if ascii then return gw_byte_runs(text, max) end      -- in C: one pass, no pattern
  local pat = char_runs[max]
  local s, e, c = find(text, pat)
  if not s then return text end               -- nothing to shorten
  local parts, n, pos = {}, 0, 1
  repeat
    local len = #c
    while sub(text, e + 1, e + len) == c do e = e + len end
    n = n + 1
    parts[n] = sub(text, pos, s - 1) .. rep(c, max)
    pos = e + 1
    s, e, c = find(text, pat, pos)
  until not s
  parts[n + 1] = sub(text, pos)
  return table.concat(parts)
end

-- The form compared for repetition: lower case, whitespace squeezed and trimmed, as
-- gsub(lower(text), "%s+", " ") trimmed; gw.fold does it in one pass, at a fifth of the cost
-- of the Lua it replaced (BENCHMARKS.md).
local fold = gw.fold
M.normalize = fold

-- Bans --------------------------------------------------------------------------------------

local function ban_key(kind, value)
  if kind ~= "ip" and kind ~= "name" then error("ban kind must be \"ip\" or \"name\"", 3) end
  if type(value) ~= "string" or value == "" then error("ban value must be a non-empty string", 3) end
  if kind == "name" then value = string.lower(value) end
  return "ban:" .. kind .. ":" .. value
end

-- Bans an IP or a name for seconds (default ban_seconds). Returns the expiry (gw.now() time).
function M.ban(kind, value, seconds)
  local key = ban_key(kind, value)
  seconds = tonumber(seconds)
  if not seconds or seconds <= 0 then seconds = cfg.ban_seconds end
  local expiry = gw.now() + seconds
  gw.store.set(key, expiry, seconds)
  gw.log("warn", "policy: ban", { kind = kind, value = value, seconds = seconds })
  return expiry
end

function M.unban(kind, value)
  gw.store.del(ban_key(kind, value))
end

-- The ban's expiry when value is banned now, else nil.
function M.banned(kind, value)
  local key = ban_key(kind, value)
  local expiry = tonumber(gw.store.get(key))
  if not expiry then return nil end
  if expiry <= gw.now() then
    gw.store.del(key)
    return nil
  end
  return expiry
end

-- Strikes -----------------------------------------------------------------------------------

-- Adds a strike for a violation (code). Returns true when it got the connection kicked.
function M.strike(conn, code)
  if conn.id == nil then return false end
  local key = "strikes:" .. conn.id
  local n = tonumber(gw.store.incr(key, 1, cfg.strike_ttl)) or 0
  if n < cfg.max_strikes then return false end
  gw.store.del(key)
  gw.log("warn", "policy: kick after strikes", { conn = conn.id, ip = conn.ip, strikes = n, last = code })
  gw.kick(conn.id, "kicked", "too many violations")
  if conn.ip and conn.ip ~= "" and cfg.kicks_to_ban and cfg.kicks_to_ban > 0 then
    local kkey = "kicks:" .. conn.ip
    local kicks = tonumber(gw.store.incr(kkey, 1, cfg.kick_window)) or 0
    if kicks >= cfg.kicks_to_ban then
      gw.store.del(kkey)
      M.ban("ip", conn.ip, cfg.ban_seconds)
    end
  end
  return true
end

local function violation(conn, code)
  if cfg.strike_codes[code] then M.strike(conn, code) end
  return code
end

-- Hooks -------------------------------------------------------------------------------------

function M.on_connect(conn)
  if type(conn.ip) == "string" and conn.ip ~= "" then
    if M.banned("ip", conn.ip) then return false, "banned" end
    if cfg.connect_rate and not gw.limit("connect:" .. conn.ip, cfg.connect_rate, cfg.connect_burst) then
      return false, "rate_limited"
    end
  end
  if type(conn.name) == "string" and conn.name ~= "" and M.banned("name", conn.name) then
    return false, "banned"
  end
  return true
end

-- A connection's flood-control keys and repetition record, made once per conn table instead
-- of two concatenations per message (a few per cent of a busy gateway's time). chatgw hands a
-- connection the same table while nothing changed it; the weak keys let an entry go with its
-- table.
local conn_keys = setmetatable({}, { __mode = "k" })

local function keys_of(conn)
  local k = conn_keys[conn]
  if not k then
    local id, ip = conn.id, conn.ip
    k = { id = id, limit = id ~= nil and "conn:" .. id or nil,
          ip = type(ip) == "string" and "ip:" .. ip or nil }
    conn_keys[conn] = k
  end
  return k
end

-- Repetition: the connection's last text (folded), how many times in a row it came, and when
-- it last came, kept in the connection's keys_of table (M.check does it in line: a call per
-- message is a few per cent of the policy's cost). A connection is handled by one VM for its
-- life, so nothing needs sharing; the table goes with the connection's (weak keys), and
-- forget clears it when the connection leaves its last room.

-- Drops the connection's moderation keys (it has left its last room, or disconnected).
-- Flood-control buckets (gw.limit) need nothing: a refilled bucket is dropped by chatgw.
function M.forget(conn)
  if conn.id == nil then return end
  local keys = conn_keys[conn]
  if keys then keys.rep_norm = nil end
  gw.store.del("strikes:" .. conn.id)
end

-- nil (pass) or a drop code; the second result is true when msg.text was rewritten.
-- opts.skip_words = true leaves the word filter to the caller (policy.lua does for /nick).
-- A connection lives on one replica: its bucket need not be shared through Redis.
local PER_CONN = { shared = false }
-- Read once here rather than as globals on every message (gw is in place before scripts load).
local type, utf8_len, gw_limit, gw_now = type, utf8.len, gw.limit, gw.now

function M.check(conn, room, msg, opts)
  local keys = conn_keys[conn] or keys_of(conn)
  local key, rate = keys.limit, cfg.conn_rate
  if key and rate and not gw_limit(key, rate, cfg.conn_burst, PER_CONN) then
    return violation(conn, "rate_limited")
  end
  key, rate = keys.ip, cfg.ip_rate
  if key and rate and not gw_limit(key, rate, cfg.ip_burst) then
    return violation(conn, "rate_limited")
  end
  local t = msg.type
  local text = msg.text
  if (t ~= "msg" and t ~= "dm") or type(text) ~= "string" then return nil end

  local changed = false
  local ascii
  local max_chars = cfg.max_text_chars
  if max_chars then
    local n = utf8_len(text)
    if (n or #text) > max_chars then return violation(conn, "too_large") end
    ascii = n == #text
  end
  local max_run = cfg.max_char_run
  if max_run then
    local c
    if ascii and max_run >= 1 then            -- collapse_runs' ASCII case, without the call
      c = #text > max_run and gw_byte_runs(text, max_run) or text
    else
      c = M.collapse_runs(text, max_run, ascii)
    end
    if c ~= text then text, changed = c, true end
  end
  if cfg.has_words and not (opts and opts.skip_words) then
    local out, hits = M.filter_words(text, cfg.word_set, cfg.word_mask)
    if hits > 0 then
      if cfg.word_action == "drop" then return violation(conn, "forbidden") end
      text, changed = out, true
      if cfg.strike_on_mask then M.strike(conn, "forbidden") end
    end
  end
  local limit = cfg.repeat_limit                 -- repetition (see above)
  if limit and limit >= 2 and keys.id then
    local norm, now, count = fold(text), gw_now(), 1
    if norm == keys.rep_norm and now - keys.rep_time < cfg.repeat_window then
      count = keys.rep_count + 1
    end
    keys.rep_norm, keys.rep_count, keys.rep_time = norm, count, now
    if count >= limit then return violation(conn, "repeated") end
  end
  if changed then msg.text = text end
  return nil, changed
end

-- Self-test: settings sanity and the pure helpers.
function M.self_test()
  local c = cfg
  for _, k in ipairs({ "max_strikes", "strike_ttl", "ban_seconds", "repeat_window" }) do
    assert(type(c[k]) == "number" and c[k] > 0, "settings.moderation." .. k .. " must be a positive number")
  end
  if c.kicks_to_ban and c.kicks_to_ban > 0 then   -- kicks:<ip> counters need a ttl
    assert(type(c.kick_window) == "number" and c.kick_window > 0,
           "settings.moderation.kick_window must be a positive number")
  end
  for _, k in ipairs({ "conn_rate", "ip_rate", "connect_rate", "max_text_chars", "max_char_run", "repeat_limit" }) do
    assert(c[k] == false or c[k] == nil or type(c[k]) == "number",
           "settings.moderation." .. k .. " must be a number or false")
  end
  assert(c.word_action == "mask" or c.word_action == "drop", "settings.moderation.word_action must be \"mask\" or \"drop\"")
  assert(type(c.word_mask) == "string", "settings.moderation.word_mask must be a string")
  for i, w in ipairs(c.words or {}) do
    assert(type(w) == "string" and string.find(w, "^" .. WORD .. "$"),
           "settings.moderation.words[" .. i .. "] must be one word")
  end
  local set = { darn = true }
  local out, hits = M.filter_words("Darn it, darnit DARN", set, "***")
  assert(out == "*** it, darnit ***" and hits == 2, "filter_words: " .. out)
  assert(M.collapse_runs("soooooo good!!!!!!", 3) == "sooo good!!!", "collapse_runs ascii")
  assert(M.collapse_runs("ééééé", 2) == "éé", "collapse_runs utf-8")
  assert(M.collapse_runs("abc", 1) == "abc", "collapse_runs no runs")
  assert(M.normalize("  Hello   World ") == "hello world", "normalize")
  assert(M.normalize(" a\tb ") == "a b" and M.normalize("a b") == "a b" and M.normalize(" ") == "",
         "normalize whitespace")
  return true
end

M.configure()

return M
