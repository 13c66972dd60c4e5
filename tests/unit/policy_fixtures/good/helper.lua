-- A sibling module: require "helper" from policy.lua.
local M = {}

function M.shout(s)
  return s:upper() .. "!"
end

return M
