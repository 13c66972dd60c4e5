-- pattern_cost.lua: the work Lua's pattern functions do, counted in steps, for linear_spec.lua.
--
-- string.find/match/gmatch/gsub run in C: the count hook does not see their work, chatgw's
-- policy_budget does not count it (a C call is one VM instruction), and the project allows no
-- wall-clock assertions in tests. So this file re-implements Lua 5.4's matcher (lstrlib.c:
-- match, max_expand, min_expand, captures, %b, %f, the str_find_aux / gmatch_aux / str_gsub
-- drivers and lmemfind for plain finds) in Lua, with the same backtracking order, and counts
-- what the C code would do:
--   * one step per match() entry and per singlematch() (one subject byte tested against one
--     pattern item), per byte compared by a back-reference (%1) and per byte %b scans;
--   * for a plain find, the bytes memchr scans plus the bytes memcmp compares.
-- Each cost function also returns what the real function returns (positions, captures, match
-- counts), so that a caller can check the port against string.* on the very calls it counts.
--
-- Usage:
--   local cost = dofile(here .. "pattern_cost.lua")
--   local steps, i, j, caps = cost.find(s, p, init, plain)     -- caps: a list of captures
--   local steps, caps       = cost.match(s, p, init)            -- caps: the captures or the match
--   local steps, items      = cost.gmatch(s, p, init, max_items)-- items: matches produced
--   local steps, n          = cost.gsub(s, p, max_n)            -- n: substitutions made

local real_find = string.find
local byte, char, sub = string.byte, string.char, string.sub

local L_ESC, CAP_UNFINISHED, CAP_POSITION = 37, -1, -2
local MAXCAPTURES = 32

local steps
local ms_s, ms_n          -- subject and its length (src_end is ms_n + 1)
local ms_p, ms_pn         -- pattern (without a leading '^' for find/match/gsub) and its length
local level, cap_init, cap_len

-- pattern and subject bytes; 0 past the end, as the C strings' terminating '\0'
local function pb(i) return byte(ms_p, i) or 0 end
local function sb(i) return byte(ms_s, i) or 0 end

-- %a %c %d %g %l %p %s %u %w %x (and upper-case complements): the C library's answer, asked
-- of the real matcher once per (class, byte). Any other escaped character stands for itself.
local CLASS_LETTERS = { a = true, c = true, d = true, g = true, l = true, p = true, s = true,
                        u = true, w = true, x = true }
local class_cache = {}
local function match_class(c, cl)
  local t = class_cache[cl]
  if not t then
    t = {}
    class_cache[cl] = t
  end
  local r = t[c]
  if r == nil then
    if CLASS_LETTERS[string.lower(char(cl))] then
      r = real_find(char(c), "^%" .. char(cl)) ~= nil
    else
      r = c == cl
    end
    t[c] = r
  end
  return r
end

local function class_end(p)
  local c = pb(p)
  p = p + 1
  if c == L_ESC then
    if p > ms_pn then error("malformed pattern (ends with '%')") end
    return p + 1
  elseif c == 91 then                                   -- '['
    if pb(p) == 94 then p = p + 1 end                   -- '^'
    repeat
      if p > ms_pn then error("malformed pattern (missing ']')") end
      local cc = pb(p)
      p = p + 1
      if cc == L_ESC and p <= ms_pn then p = p + 1 end
    until pb(p) == 93                                   -- ']'
    return p + 1
  end
  return p
end

local function matchbracketclass(c, p, ec)
  local sig = true
  if pb(p + 1) == 94 then
    sig = false
    p = p + 1
  end
  p = p + 1
  while p < ec do
    local pc = pb(p)
    if pc == L_ESC then
      p = p + 1
      if match_class(c, pb(p)) then return sig end
    elseif pb(p + 1) == 45 and p + 2 < ec then          -- a range x-y
      p = p + 2
      if pb(p - 2) <= c and c <= pb(p) then return sig end
    elseif pc == c then
      return sig
    end
    p = p + 1
  end
  return not sig
end

local function singlematch(s, p, ep)
  steps = steps + 1
  if s > ms_n then return false end
  local c, pc = sb(s), pb(p)
  if pc == 46 then return true                          -- '.'
  elseif pc == L_ESC then return match_class(c, pb(p + 1))
  elseif pc == 91 then return matchbracketclass(c, p, ep - 1)
  end
  return pc == c
end

local match

local function matchbalance(s, p)
  if p >= ms_pn then error("malformed pattern (missing arguments to '%b')") end
  steps = steps + 1
  if sb(s) ~= pb(p) then return nil end
  local b, e, cont = pb(p), pb(p + 1), 1
  s = s + 1
  while s <= ms_n do
    steps = steps + 1
    local c = sb(s)
    if c == e then
      cont = cont - 1
      if cont == 0 then return s + 1 end
    elseif c == b then
      cont = cont + 1
    end
    s = s + 1
  end
  return nil
end

local function max_expand(s, p, ep)
  local i = 0
  while singlematch(s + i, p, ep) do i = i + 1 end
  while i >= 0 do
    local res = match(s + i, ep + 1)
    if res then return res end
    i = i - 1
  end
  return nil
end

local function min_expand(s, p, ep)
  while true do
    local res = match(s, ep + 1)
    if res then return res end
    if singlematch(s, p, ep) then s = s + 1 else return nil end
  end
end

local function start_capture(s, p, what)
  if level >= MAXCAPTURES then error("too many captures") end
  level = level + 1
  cap_init[level], cap_len[level] = s, what
  local res = match(s, p)
  if not res then level = level - 1 end
  return res
end

local function end_capture(s, p)
  local l
  for k = level, 1, -1 do
    if cap_len[k] == CAP_UNFINISHED then l = k; break end
  end
  if not l then error("invalid pattern capture") end
  cap_len[l] = s - cap_init[l]
  local res = match(s, p)
  if not res then cap_len[l] = CAP_UNFINISHED end
  return res
end

local function match_capture(s, digit)
  local l = digit - 48
  if l < 1 or l > level or cap_len[l] == CAP_UNFINISHED then error("invalid capture index %" .. (l)) end
  local len = cap_len[l]
  steps = steps + 1
  if len < 0 or ms_n + 1 - s < len then return nil end   -- a position capture never matches
  local init = cap_init[l]
  for k = 0, len - 1 do                                  -- memcmp, to the first difference
    steps = steps + 1
    if sb(init + k) ~= sb(s + k) then return nil end
  end
  return s + len
end

match = function(s, p)
  steps = steps + 1
  while true do
    if p > ms_pn then return s end
    local pc = pb(p)
    if pc == 40 then                                     -- '('
      if pb(p + 1) == 41 then return start_capture(s, p + 2, CAP_POSITION) end
      return start_capture(s, p + 1, CAP_UNFINISHED)
    elseif pc == 41 then                                 -- ')'
      return end_capture(s, p + 1)
    elseif pc == 36 and p + 1 > ms_pn then               -- '$' ending the pattern
      if s == ms_n + 1 then return s end
      return nil
    elseif pc == L_ESC and pb(p + 1) == 98 then          -- %bxy
      s = matchbalance(s, p + 2)
      if not s then return nil end
      p = p + 4
    elseif pc == L_ESC and pb(p + 1) == 102 then         -- %f[set]
      p = p + 2
      if pb(p) ~= 91 then error("missing '[' after '%f' in pattern") end
      local ep = class_end(p)
      local prev = s == 1 and 0 or sb(s - 1)
      steps = steps + 1
      if not matchbracketclass(prev, p, ep - 1) and matchbracketclass(sb(s), p, ep - 1) then
        p = ep
      else
        return nil
      end
    elseif pc == L_ESC and pb(p + 1) >= 48 and pb(p + 1) <= 57 then   -- %0-%9
      s = match_capture(s, pb(p + 1))
      if not s then return nil end
      p = p + 2
    else                                                 -- a single item, maybe quantified
      local ep = class_end(p)
      local q = pb(ep)
      if not singlematch(s, p, ep) then
        if q == 42 or q == 63 or q == 45 then            -- '*' '?' '-' accept no match
          p = ep + 1
        else
          return nil
        end
      elseif q == 63 then                                -- '?'
        local res = match(s + 1, ep + 1)
        if res then return res end
        p = ep + 1
      elseif q == 43 then                                -- '+'
        return max_expand(s + 1, p, ep)
      elseif q == 42 then                                -- '*'
        return max_expand(s, p, ep)
      elseif q == 45 then                                -- '-'
        return min_expand(s, p, ep)
      else
        s, p = s + 1, ep
      end
    end
  end
end

-- The captures of a match from s to e (exclusive); whole: the match itself when there are none.
local function captures(s, e, whole)
  local out = {}
  if level == 0 then
    if whole then out[1] = sub(ms_s, s, e - 1) end
    return out
  end
  for l = 1, level do
    if cap_len[l] == CAP_POSITION then out[l] = cap_init[l]
    elseif cap_len[l] == CAP_UNFINISHED then error("unfinished capture")
    else out[l] = sub(ms_s, cap_init[l], cap_init[l] + cap_len[l] - 1) end
  end
  return out
end

local function prepare(s, p, strip_anchor)
  local anchor = strip_anchor and byte(p, 1) == 94
  ms_s, ms_n = s, #s
  ms_p = anchor and sub(p, 2) or p
  ms_pn = #ms_p
  cap_init, cap_len = {}, {}
  return anchor
end

local function posrelat(init, len)
  if init == nil or init == 0 then return 1 end
  if init > 0 then return init end
  if init < -len then return 1 end
  return len + init + 1
end

-- lmemfind: memchr for the first byte, memcmp for the rest. Returns the position or nil.
local function lmemfind(s, init, p)
  local l2 = #p
  if l2 == 0 then return init end
  local l1 = #s - init + 1
  if l2 > l1 then return nil end
  local first = sub(p, 1, 1)
  l1 = l1 - (l2 - 1)
  local i = init
  while l1 > 0 do
    local at = real_find(s, first, i, true)
    if not at or at > i + l1 - 1 then
      steps = steps + l1
      return nil
    end
    steps = steps + (at - i + 1)
    local same = true
    for k = 1, l2 - 1 do
      steps = steps + 1
      if byte(s, at + k) ~= byte(p, 1 + k) then same = false; break end
    end
    if same then return at end
    l1 = l1 - (at + 1 - i)
    i = at + 1
  end
  return nil
end

local SPECIALS = "[%^%$%*%+%?%.%(%[%%%-]"

local function find_aux(s, p, init, plain, is_find)
  steps = 0
  local ls = #s
  init = posrelat(init, ls)
  if init > ls + 1 then return steps, nil end
  if is_find and (plain or not real_find(p, SPECIALS)) then
    local at = lmemfind(s, init, p)
    if not at then return steps, nil end
    return steps, at, at + #p - 1, {}
  end
  local anchor = prepare(s, p, true)
  local s1 = init
  repeat
    level = 0
    local e = match(s1, 1)
    if e then
      if is_find then return steps, s1, e - 1, captures(s1, e, false) end
      return steps, captures(s1, e, true)
    end
    s1 = s1 + 1
  until s1 > ls + 1 or anchor
  return steps, nil
end

local M = {}

function M.find(s, p, init, plain) return find_aux(s, p, init, plain, true) end

function M.match(s, p, init) return find_aux(s, p, init, false, false) end

-- gmatch as lstrlib's gmatch_aux: no anchor ('^' is an ordinary character), a match may not end
-- where the last one ended. Produces at most max_items matches.
function M.gmatch(s, p, init, max_items)
  steps = 0
  local ls = #s
  init = posrelat(init, ls)
  if init > ls + 1 then init = ls + 2 end
  prepare(s, p, false)
  local src, lastmatch, items = init, nil, 0
  while items < (max_items or math.huge) do
    local found = false
    while src <= ls + 1 do
      level = 0
      local e = match(src, 1)
      if e and e ~= lastmatch then
        src, lastmatch, found = e, e, true
        break
      end
      src = src + 1
    end
    if not found then break end
    items = items + 1
  end
  return steps, items
end

-- gsub as lstrlib's str_gsub (the replacement is not built: only the matching is counted).
function M.gsub(s, p, max_n)
  steps = 0
  local ls = #s
  local anchor = prepare(s, p, true)
  local src, lastmatch, n = 1, nil, 0
  max_n = max_n or ls + 1
  while n < max_n do
    level = 0
    local e = match(src, 1)
    if e and e ~= lastmatch then
      n = n + 1
      src, lastmatch = e, e
    elseif src <= ls then
      src = src + 1
    else
      break
    end
    if anchor then break end
  end
  return steps, n
end

return M
