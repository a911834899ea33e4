"""The shared store's Lua scripts, by name, with the SHA1 that EVALSHA calls them by.

Each runs atomically on the node that holds the identity's slot. Keys read by name inside a
script (token and challenge entries listed in an index) share the slot of KEYS[1].
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

_PUT_INDEXED = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return 1
"""

_LIST_INDEXED = """
local out = {}
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local value = redis.call('GET', ARGV[1] .. member)
  if value then
    table.insert(out, member)
    table.insert(out, value)
  else
    redis.call('SREM', KEYS[1], member)
  end
end
return out
"""

# A token entry is "<fingerprint>:<sealed value>", so dropping compares without decrypting.
_DROP_TOKEN = """
local dropped = 0
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, string.len(ARGV[1])) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
  dropped = 1
end
if ARGV[3] ~= '' then
  redis.call('PUBLISH', ARGV[3], ARGV[4])
end
return dropped
"""

_TAKE_INDEXED = """
local value = redis.call('GET', KEYS[1])
if value then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[1])
end
return value
"""

_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return -1
end
return redis.call('PTTL', KEYS[1])
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
"""

# Redis's own clock, so replicas' clocks need not agree.
_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, count + 1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, count, tonumber(oldest[2]) + window - now}
"""


@dataclass(frozen=True, slots=True)
class Script:
    source: str
    sha: str

    @classmethod
    def of(cls, source: str) -> Script:
        return cls(source, hashlib.sha1(source.encode()).hexdigest())


SCRIPTS = {
    name: Script.of(source)
    for name, source in {
        "put_indexed": _PUT_INDEXED,
        "list_indexed": _LIST_INDEXED,
        "drop_token": _DROP_TOKEN,
        "take_indexed": _TAKE_INDEXED,
        "acquire": _ACQUIRE,
        "release": _RELEASE,
        "window": _WINDOW,
    }.items()
}
