"""The SPEC §2 token bucket shared by every process on one account: Redis hashes changed by Lua scripts.

One hash per minute (`{prefix}tokens:{minute_epoch}`) holds the Tier A / Tier B / Reserve counts; a
key that does not exist yet is a full bucket, so the buckets "refill at the start of each minute"
without anybody refilling them. Every change is one Lua script, so two runners can never both
spend the last token. `take` is `strategies.rules.tokens.take_token_nb` in Lua (same arithmetic,
same return codes, checked by a differential test); `consume` takes a batch of tokens all or
nothing, for a runner that measured what its kernel step spent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import redis

from strategies.rules.tokens import TAKE_FAILED, TAKE_FALLBACK, TAKE_OK
from tierlab.errors import ConfigError

__all__ = ["TAKE_FAILED", "TAKE_FALLBACK", "TAKE_OK", "RedisTokenBucket", "minute_epoch"]

# Fields a, b, r are buckets 0 (Tier A), 1 (Tier B), 2 (Reserve) of strategies.rules.tokens.
# A new minute's key starts full. ARGV: cap_a, cap_b, cap_r, ttl_s, ...
_INIT = """
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then
  redis.call('HSET', key, 'a', ARGV[1], 'b', ARGV[2], 'r', ARGV[3])
  redis.call('EXPIRE', key, tonumber(ARGV[4]))
end
"""

# take_token_nb: ARGV[5] tier (0 A, 1 B, 2 Bench), ARGV[6] second, ARGV[7] fallback 0/1, ARGV[8] window.
_TAKE = _INIT + """
local tier = tonumber(ARGV[5])
local second = tonumber(ARGV[6])
local fallback = ARGV[7] == '1'
local window = tonumber(ARGV[8])
local field = 'r'
if tier == 0 then field = 'a' elseif tier == 1 then field = 'b' end
if tonumber(redis.call('HGET', key, field)) > 0 then
  redis.call('HINCRBY', key, field, -1)
  return 1
end
if tier == 0 and fallback and second < window and tonumber(redis.call('HGET', key, 'r')) > 0 then
  redis.call('HINCRBY', key, 'r', -1)
  return 2
end
return 0
"""

# All-or-nothing batch: ARGV[5..7] counts for a, b, r; ARGV[8] an op id ('' = none). A consume whose
# op id was already applied this minute is not taken twice (a runner retrying after a lost answer).
_CONSUME = _INIT + """
local op = ARGV[8]
local a = tonumber(redis.call('HGET', key, 'a'))
local b = tonumber(redis.call('HGET', key, 'b'))
local r = tonumber(redis.call('HGET', key, 'r'))
if op ~= '' and redis.call('HEXISTS', key, 'op:' .. op) == 1 then
  return {1, a, b, r}
end
local ca, cb, cr = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
if ca > a or cb > b or cr > r then
  return {0, a, b, r}
end
if ca > 0 then a = redis.call('HINCRBY', key, 'a', 0 - ca) end
if cb > 0 then b = redis.call('HINCRBY', key, 'b', 0 - cb) end
if cr > 0 then r = redis.call('HINCRBY', key, 'r', 0 - cr) end
if op ~= '' then redis.call('HSET', key, 'op:' .. op, 1) end
return {1, a, b, r}
"""


def minute_epoch(now_s: float) -> int:
    """The minute a bar close belongs to, as the kernel counts it (unix seconds // 60)."""
    return int(now_s // 60)


class RedisTokenBucket:
    """SPEC §2 buckets (Tier A, Tier B, Reserve per minute) shared through Redis by every process."""

    def __init__(self, redis_client: redis.Redis, prefix: str, cap_a: int, cap_b: int, cap_reserve: int,
                 *, ttl_s: int = 180) -> None:
        for name, v in (("cap_a", cap_a), ("cap_b", cap_b), ("cap_reserve", cap_reserve)):
            if int(v) != v or v < 0:
                raise ConfigError(f"RedisTokenBucket {name} must be a whole number >= 0, got {v!r}")
        if ttl_s < 60:
            raise ConfigError(f"RedisTokenBucket ttl_s must be >= 60 (a key must outlive its minute), got {ttl_s}")
        self.redis = redis_client
        self.prefix = prefix
        self.caps = (int(cap_a), int(cap_b), int(cap_reserve))
        self.ttl_s = int(ttl_s)
        self._take = redis_client.register_script(_TAKE)
        self._consume = redis_client.register_script(_CONSUME)

    def key(self, minute_epoch: int) -> str:
        """The Redis key of one minute's buckets (minute_epoch = unix seconds // 60)."""
        return f"{self.prefix}tokens:{int(minute_epoch)}"

    def _argv(self) -> list[int]:
        return [*self.caps, self.ttl_s]

    def take(self, minute_epoch: int, tier: int, second_of_minute: float, fallback: bool,
             fallback_window_s: float) -> int:
        """Take one token for one evaluation, exactly as take_token_nb: TAKE_OK, TAKE_FALLBACK or TAKE_FAILED."""
        if tier not in (0, 1, 2):
            raise ConfigError(f"tier must be 0 (A), 1 (B) or 2 (Bench), got {tier!r}")
        if not (math.isfinite(second_of_minute) and math.isfinite(fallback_window_s)):
            raise ConfigError(f"second_of_minute and fallback_window_s must be finite, got {second_of_minute!r}, "
                              f"{fallback_window_s!r}")
        args = [*self._argv(), int(tier), repr(float(second_of_minute)), 1 if fallback else 0,
                repr(float(fallback_window_s))]
        return int(self._take(keys=[self.key(minute_epoch)], args=args))

    def consume(self, minute_epoch: int, counts: Sequence[int], *, op_id: str = "") -> tuple[bool, list[int]]:
        """Take counts[A, B, Reserve] only if all are there (else nothing); return (ok, what remains).

        With `op_id`, a consume already applied in this minute is not applied again (ok, remaining).
        """
        if len(counts) != 3 or any(int(c) != c or c < 0 for c in counts):
            raise ConfigError(f"consume counts must be three whole numbers >= 0 (A, B, Reserve), got {list(counts)!r}")
        args = [*self._argv(), *(int(c) for c in counts), str(op_id)]
        ok, a, b, r = self._consume(keys=[self.key(minute_epoch)], args=args)
        return bool(ok), [int(a), int(b), int(r)]

    def remaining(self, minute_epoch: int) -> list[int]:
        """Tokens left in [A, B, Reserve] for that minute (a minute nobody touched is full)."""
        vals = self.redis.hmget(self.key(minute_epoch), ["a", "b", "r"])
        if vals[0] is None:
            return list(self.caps)
        return [int(v) for v in vals]

