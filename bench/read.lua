-- wrk script: GET a random resource from a list of paths (one per line in $PATHS_FILE).
local paths = {}
local f = io.open(os.getenv("PATHS_FILE"), "r")
for line in f:lines() do paths[#paths + 1] = line end
f:close()
math.randomseed(42)
request = function()
  return wrk.format("GET", paths[math.random(#paths)], {["Accept"] = "application/fhir+json"})
end
