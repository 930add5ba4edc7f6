"""Per-tenant rate limits in Redis, shared by every API process.

A tenant's window for a limit opens at its first use and lasts `window_s`; within it at most
`limit` units are admitted (one Send test, one notification of a batch). A request that would go
over is refused whole with 429 and Retry-After (the window's remaining seconds) and uses nothing.
The count, the refusal and the window's expiry happen in one Lua call, so concurrent API processes
never admit more than the limit.

Producers never depend on Redis: when it does not answer, the notification limit fails open (the
request goes on to the outbox, with a warning in the log and `tenantmail_ratelimit_fail_open_total`
counting it). The Send test limit fails closed (503 with Retry-After): it is what keeps the endpoint
from being used as a relay, and nothing is lost by asking an admin to try again.
"""

from __future__ import annotations

from typing import Any

import structlog
from prometheus_client import Counter

from api.errors import ApiError
from shared.redis_client import UNAVAILABLE

_log = structlog.get_logger("tenantmail.api")
UNAVAILABLE_RETRY_AFTER_S = 5

# KEYS[1] counter; ARGV cost, window_s, limit. Returns {admitted 0/1, seconds left in the window}.
_HIT = """
local cost, window_s, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local used = redis.call('INCRBY', KEYS[1], cost)
if used == cost then redis.call('EXPIRE', KEYS[1], window_s) end
local left = redis.call('TTL', KEYS[1])
if used > limit then
  redis.call('DECRBY', KEYS[1], cost)
  return {0, left}
end
return {1, left}
"""

# Only inside the window that counted them: a counter created here would have no expiry.
_REFUND = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('DECRBY', KEYS[1], tonumber(ARGV[1])) end
return 0
"""


def _key(name: str, tenant_id: str) -> str:
    return f"tm:rl:{name}:{tenant_id}"


async def hit(redis: Any, name: str, tenant_id: str, *, limit: int, cost: int = 1, window_s: int = 60,
              fail_open: Counter | None = None) -> None:
    """Count `cost` uses of `name` by the tenant; 429 with Retry-After when that would pass `limit`.

    When Redis does not answer: with `fail_open` (a counter labelled by limit) the use is admitted,
    logged and counted there; without it, 503 with Retry-After."""
    try:
        admitted, left_s = await redis.eval(_HIT, 1, _key(name, tenant_id), cost, window_s, limit)
    except UNAVAILABLE as exc:
        if fail_open is None:
            raise ApiError(503, "rate_limit_unavailable", "the rate limit store does not answer; try again later",
                           retry_after_s=UNAVAILABLE_RETRY_AFTER_S) from None
        _log.warning("ratelimit.fail_open", limit=name, tenant_id=tenant_id, cost=cost, error=type(exc).__name__)
        fail_open.labels(name).inc(cost)
        return
    if not int(admitted):
        retry_after_s = max(1, int(left_s))
        what = name.replace("_", " ")
        raise ApiError(429, "rate_limited", f"at most {limit} {what}s per {window_s} s for a tenant; "
                       f"try again in {retry_after_s} s", retry_after_s=retry_after_s)


async def refund(redis: Any, name: str, tenant_id: str, *, cost: int = 1) -> None:
    """Give back uses counted by `hit` for a request that then did nothing (it was invalid); skipped
    when Redis does not answer (the window ends on its own)."""
    try:
        await redis.eval(_REFUND, 1, _key(name, tenant_id), cost)
    except UNAVAILABLE as exc:
        _log.warning("ratelimit.refund_skipped", limit=name, tenant_id=tenant_id, error=type(exc).__name__)
