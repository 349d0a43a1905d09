/**
 * The Redis store's Lua scripts: each runs atomically on the server, so the key index, its totals,
 * the tag sets and the claims never show a half-made change to another proxy.
 */
// Adds a key to a tag's set, and makes the set live at least as long as the entry (ARGV[2], ms).
export const TAG_SCRIPT = `redis.call("sadd", KEYS[1], ARGV[1])
local ttl = redis.call("pttl", KEYS[1])
if ttl < tonumber(ARGV[2]) then redis.call("pexpire", KEYS[1], ARGV[2]) end
return 1`
// Takes keys out of the index (names, expiry, "<bytes> <variants>" per key) and their figures out
// of the totals (KEYS[4]): a Lua function the scripts below share.
const UNINDEX = `local function unindex(keys)
  for _, key in ipairs(keys) do
    if redis.call("zrem", KEYS[1], key) == 1 then
      redis.call("zrem", KEYS[2], key)
      local held = redis.call("hget", KEYS[3], key)
      if held then
        local bytes, variants = string.match(held, "(%d+) (%d+)")
        -- 0 - n, not -n: -0 would reach Redis as "-0", which HINCRBY refuses as no integer
        redis.call("hincrby", KEYS[4], "bytes", 0 - tonumber(bytes))
        redis.call("hincrby", KEYS[4], "variants", 0 - tonumber(variants))
        redis.call("hdel", KEYS[3], key)
      end
    end
  end
end
`
// Lists a key in the index until its delete time (ARGV[2]) with its bytes and variants (ARGV[6],
// ARGV[7]) added to the totals, drops up to ARGV[5] keys whose time has come (ARGV[3] is now), and makes the index live at
// least as long as the entry (ARGV[4], ms): the index never outgrows what is stored, whether or not
// anyone lists it, and /metrics reads the count and the total without walking it.
export const INDEX_SCRIPT = `${UNINDEX}
unindex({ARGV[1]})
redis.call("zadd", KEYS[1], 0, ARGV[1])
redis.call("zadd", KEYS[2], ARGV[2], ARGV[1])
redis.call("hset", KEYS[3], ARGV[1], ARGV[6] .. " " .. ARGV[7])
redis.call("hincrby", KEYS[4], "bytes", ARGV[6])
redis.call("hincrby", KEYS[4], "variants", ARGV[7])
local gone = redis.call("zrangebyscore", KEYS[2], "-inf", ARGV[3], "LIMIT", 0, ARGV[5])
unindex(gone)
for _, key in ipairs(KEYS) do
  if redis.call("pttl", key) < tonumber(ARGV[4]) then redis.call("pexpire", key, ARGV[4]) end
end
return #gone`
export const UNINDEX_SCRIPT = `${UNINDEX}unindex(ARGV)`
// Sets a listed key's bytes and variants (ARGV[2], ARGV[3]) after some of its variants went,
// moving the totals by the difference; a key no longer listed is left out.
export const RESIZE_SCRIPT = `local held = redis.call("hget", KEYS[3], ARGV[1])
if not held then return 0 end
local bytes, variants = string.match(held, "(%d+) (%d+)")
redis.call("hincrby", KEYS[4], "bytes", tonumber(ARGV[2]) - tonumber(bytes))
redis.call("hincrby", KEYS[4], "variants", tonumber(ARGV[3]) - tonumber(variants))
redis.call("hset", KEYS[3], ARGV[1], ARGV[2] .. " " .. ARGV[3])
return 1`
/** Keys whose time has come that one write drops from the index: writes outnumber expiries on average. */
export const INDEX_PRUNE_BATCH = 100
// Compare-and-extend: a claim is renewed only by its holder (ARGV[2]: the new lease, ms).
export const RENEW_SCRIPT = `if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("pexpire", KEYS[1], ARGV[2]) end return 0`
// Compare-and-delete: a claim is released only by its holder.
export const RELEASE_SCRIPT = `if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end return 0`
