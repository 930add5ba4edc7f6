"""Rolling-window counters in Redis, shared by the whole fleet: Exchange's sending limits kept ahead.

A counter (one Redis hash) holds counts in time buckets (1/1440 of its window, so one minute of a 24 h
window). A bucket counts until its end plus the window plus a margin (`Window.hold_ms`) has passed, so it
is released a little late, never early: the counter can only overstate what Exchange counted.

`admit` takes, in order, each item of a list of wanted counts that fits under the limit of every counter
it names, in one Lua call (all or nothing per item); an item that does not fit blocks the later ones that
need a counter it did not fit, so none overtakes it there, and the answer says when the first one left out
will fit. `give_back` returns what was taken for a send that never reached Exchange.

A counter Redis lost (FLUSHALL, failover to an empty replica, eviction) has no `_seeded` field. `admit`
then takes nothing and names it; the caller rebuilds it from the database (`shared.quota_usage`) with
`seed`, which writes only if no one seeded it meanwhile. So a lost counter never reads as "nothing sent".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from shared.settings import Settings
from transport.redis_errors import redis_boundary

BUCKETS_PER_WINDOW = 1440
RECIPIENTS, REQUESTS, EXTERNAL = "tm:quota:rcpt:", "tm:quota:req:", "tm:quota:ext:"  # counter key prefixes
UPLOADS = "tm:quota:upl:"  # bytes uploaded into upload sessions (large attachments)
_SEEDED = "_seeded"

# KEYS: the counters. ARGV: now_ms, n_counters, then per counter (hold_ms, bucket_ms, limit), then the
# wanted counts, one row of n_counters values per item. Returns {next_free_ms, bucket per counter, flag per
# item (1 taken, 0 waits, 2 over a limit on its own)} or {-1, index of the first unseeded counter}.
_ADMIT = """
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local totals, buckets, ends = {}, {}, {}
for c = 1, n do
  local window, width = tonumber(ARGV[3 + (c - 1) * 3]), tonumber(ARGV[4 + (c - 1) * 3])
  if redis.call('HEXISTS', KEYS[c], '_seeded') == 0 then return {-1, c - 1} end
  local flat = redis.call('HGETALL', KEYS[c])
  local total, live = 0, {}
  for i = 1, #flat, 2 do
    local b = tonumber(flat[i])
    if b then
      local count = tonumber(flat[i + 1])
      if (b + 1) * width + window <= now then redis.call('HDEL', KEYS[c], flat[i])
      else total = total + count; table.insert(live, {b, count}) end
    end
  end
  table.sort(live, function(x, y) return x[1] < y[1] end)
  totals[c], ends[c], buckets[c] = total, live, math.floor(now / width)
end
local base = 3 + n * 3
local items = (#ARGV - base + 1) / n
local function want(i, c) return tonumber(ARGV[base + i * n + c - 1]) end
local function limit(c) return tonumber(ARGV[5 + (c - 1) * 3]) end
-- An item that does not fit blocks every later item that needs the same counter (no overtaking on it);
-- an item that needs none of a blocked counter (internal mail and the external budget) still goes.
local flags, blocked, added, first_wait = {}, {}, {}, -1
for c = 1, n do added[c] = 0 end
for i = 0, items - 1 do
  local fits, never = true, false
  for c = 1, n do
    local w = want(i, c)
    if w > limit(c) then never = true end
    if w > 0 and (blocked[c] or totals[c] + w > limit(c)) then fits = false end
  end
  if never then flags[i + 1] = 2
  elseif fits then
    flags[i + 1] = 1
    for c = 1, n do totals[c] = totals[c] + want(i, c); added[c] = added[c] + want(i, c) end
  else
    flags[i + 1] = 0
    if first_wait < 0 then first_wait = i end
    for c = 1, n do
      if want(i, c) > 0 and (blocked[c] or totals[c] + want(i, c) > limit(c)) then blocked[c] = true end
    end
  end
end
local next_free = 0
if first_wait >= 0 then
  for c = 1, n do
    if added[c] > 0 then table.insert(ends[c], {buckets[c], added[c]}) end  -- taken now: frees last
    local need = totals[c] + want(first_wait, c) - limit(c)
    local window, width = tonumber(ARGV[3 + (c - 1) * 3]), tonumber(ARGV[4 + (c - 1) * 3])
    local at = now
    for _, entry in ipairs(ends[c]) do
      if need <= 0 then break end
      need = need - entry[2]
      at = (entry[1] + 1) * width + window
    end
    if at > next_free then next_free = at end
  end
end
local out = {next_free}
for c = 1, n do
  if added[c] > 0 then redis.call('HINCRBY', KEYS[c], buckets[c], added[c]) end
  redis.call('PEXPIRE', KEYS[c], tonumber(ARGV[3 + (c - 1) * 3]) * 2)
  table.insert(out, buckets[c])
end
for i = 1, items do table.insert(out, flags[i]) end
return out
"""
# KEYS[1]: the counter. ARGV: window_ms, then bucket/count pairs. Writes only an unseeded counter.
_SEED = """
if redis.call('HEXISTS', KEYS[1], '_seeded') == 1 then return 0 end
for i = 2, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], '_seeded', 1)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return 1
"""

# KEYS[1]: the counter. ARGV: bucket, count. Only a seeded counter: a lost one is rebuilt from the database.
_GIVE_BACK = """
if redis.call('HEXISTS', KEYS[1], '_seeded') == 0 then return 0 end
local left = redis.call('HINCRBY', KEYS[1], ARGV[1], -tonumber(ARGV[2]))
if left <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
"""


@dataclass(frozen=True, slots=True)
class Window:
    """One counter: its Redis key, window and limit."""

    key: str
    window_ms: int
    limit: int

    @property
    def hold_ms(self) -> int:
        """How long a count holds after its bucket ends: the window plus a margin (1/50 of it, at most
        5 minutes) for the time between our count and Exchange's, which sees the request a little later."""
        return self.window_ms + min(self.window_ms // 50, 300_000)

    @property
    def bucket_ms(self) -> int:
        """Width of one time bucket."""
        return max(1, math.ceil(self.window_ms / BUCKETS_PER_WINDOW))

    def bucket_of(self, at_ms: int) -> int:
        """The bucket a count taken at `at_ms` goes into."""
        return at_ms // self.bucket_ms


TAKEN, WAITS, NEVER = 1, 0, 2


@dataclass(frozen=True, slots=True)
class Admission:
    """Per item: TAKEN, WAITS (until `next_free_ms`, when the first waiting one fits) or NEVER (over a
    limit on its own); the bucket each counter took them in (for `give_back`); or the first counter Redis
    lost (`unseeded`), in which case nothing was taken."""

    flags: tuple[int, ...] = ()
    next_free_ms: int = 0
    buckets: tuple[int, ...] = ()
    unseeded: Window | None = None

    @property
    def admitted(self) -> int:
        """How many items were taken."""
        return self.flags.count(TAKEN)


@dataclass(frozen=True, slots=True)
class Usage:
    """What a counter holds now: its total in the window and when its oldest count is released."""

    used: int
    seeded: bool
    oldest_release_ms: int | None


class QuotaWindows:
    """The counters on one Redis (a synchronous client: the task thread calls it, or the API's executor)."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def admit(self, windows: Sequence[Window], wanted: Sequence[Sequence[int]], now_ms: int) -> Admission:
        """Take `wanted[i]` (one count per window) for the longest prefix of items that fits every window."""
        if not wanted:
            return Admission()
        args: list[Any] = [now_ms, len(windows)]
        for w in windows:
            args += [w.hold_ms, w.bucket_ms, w.limit]
        for row in wanted:
            args += list(row)
        with redis_boundary("quota admit"):
            out = [int(v) for v in self._redis.eval(_ADMIT, len(windows), *[w.key for w in windows], *args)]
        if out[0] == -1 and len(out) == 2:
            return Admission(unseeded=windows[out[1]])
        n = len(windows)
        return Admission(tuple(out[1 + n:]), out[0], tuple(out[1:1 + n]))

    def seed(self, window: Window, counts: Mapping[int, int]) -> bool:
        """Write a lost counter's rebuilt buckets (bucket → count); False when someone seeded it first."""
        args: list[Any] = [window.hold_ms]
        for bucket, count in counts.items():
            args += [bucket, count]
        with redis_boundary("quota seed"):
            return bool(self._redis.eval(_SEED, 1, window.key, *args))

    def give_back(self, window: Window, bucket: int, count: int) -> None:
        """Return `count` taken in `bucket` for a send that never reached Exchange."""
        if count > 0:
            with redis_boundary("quota give back"):
                self._redis.eval(_GIVE_BACK, 1, window.key, bucket, count)



async def read_usage(client: Any, window: Window, now_ms: int) -> Usage:
    """A counter's total and the release time of its oldest live bucket, read only, on an asyncio client."""
    with redis_boundary("quota usage"):
        flat: dict[bytes | str, bytes | str] = await client.hgetall(window.key)
    return usage_of(flat, window, now_ms)


def usage_of(flat: Mapping[bytes | str, bytes | str], window: Window, now_ms: int) -> Usage:
    """The usage a counter's hash fields (`HGETALL`) say, at `now_ms`."""
    live = {int(k): int(v) for k, v in flat.items() if _text(k) != _SEEDED
            and (int(k) + 1) * window.bucket_ms + window.hold_ms > now_ms}
    oldest = min(live) if live else None
    release = (oldest + 1) * window.bucket_ms + window.hold_ms if oldest is not None else None
    return Usage(sum(live.values()), any(_text(k) == _SEEDED for k in flat), release)


def sender_windows(*, tenant_id: str, client_id: str, address: str, daily_recipient_limit: int | None,
                   daily_external_recipient_limit: int | None, settings: Settings) -> tuple[Window, ...]:
    """The counters a send from one sender mailbox passes: its recipients per 24 h, its requests per 10
    minutes (both per app and mailbox, as Exchange keeps them), and the tenant's external recipients when
    it set a budget."""
    mailbox = f"{client_id}:{address.lower()}"
    day_ms, rate_ms = int(settings.recipient_window_s * 1000), int(settings.request_window_s * 1000)
    windows = [Window(f"{RECIPIENTS}{mailbox}", day_ms, daily_recipient_limit or settings.daily_recipient_limit),
               Window(f"{REQUESTS}{mailbox}", rate_ms, settings.mailbox_requests_per_window)]
    if daily_external_recipient_limit is not None:
        windows.append(Window(f"{EXTERNAL}{tenant_id}", day_ms, daily_external_recipient_limit))
    return tuple(windows)


def upload_window(*, client_id: str, address: str, settings: Settings) -> Window:
    """Graph's upload volume per app and mailbox (150 MB per 5 minutes), in bytes: what a large message's
    attachments take before it is sent."""
    return Window(f"{UPLOADS}{client_id}:{address.lower()}", int(settings.upload_window_s * 1000),
                  settings.upload_bytes_per_window)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
