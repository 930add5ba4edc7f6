"""redis-py's errors become ours here: the one boundary every Redis call of the token cache, the
throttle and the send marks goes through.

A refused, dropped or timed-out connection (and a Redis still loading its data) is
`RedisUnavailable`, a `TransientError`: nothing was sent because of it, so the row can wait and
try again. Anything else redis-py raises (a script error, a wrong type) is a bug and stays as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis import exceptions

from shared.codes import Code
from shared.errors import RedisUnavailable

_UNAVAILABLE = (exceptions.ConnectionError, exceptions.TimeoutError)  # BusyLoadingError is a ConnectionError


@contextmanager
def redis_boundary(what: str) -> Iterator[None]:
    """Run Redis calls, raising `RedisUnavailable` (from the original) when Redis cannot answer."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise RedisUnavailable(f"Redis unavailable ({what}): {type(exc).__name__}: {exc}",
                               code=Code.REDIS_UNAVAILABLE) from exc
