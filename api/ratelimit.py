"""Per-tenant fixed-window rate limits in Redis (shared by every API process)."""

from __future__ import annotations

import time
from typing import Any

from api.errors import ApiError


async def hit(redis: Any, name: str, tenant_id: str, *, limit: int, window_s: int = 60) -> None:
    """Count one use of `name` by the tenant in the current window; 429 with Retry-After over `limit`."""
    now_s = time.time()
    window = int(now_s // window_s)
    key = f"tm:rl:{name}:{tenant_id}:{window}"
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.expire(key, window_s + 1)
        count, _ = await pipe.execute()
    if int(count) > limit:
        retry_after_s = max(1, int((window + 1) * window_s - now_s))
        raise ApiError(429, "rate_limited", f"at most {limit} {name.replace('_', ' ')}s per {window_s} s; "
                       f"try again in {retry_after_s} s", retry_after_s=retry_after_s)
