-- No policy.lua in this directory.
return {}
