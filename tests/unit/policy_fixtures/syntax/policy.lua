-- line 2
local x = = 1
return {}
