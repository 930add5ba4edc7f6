"""Circuit breakers: stop sending to a Graph host, an Entra ID authority, an (app, mailbox) or the SMTP
relay that is down; probe it once per interval for the whole fleet; ramp traffic up once it answers.

    scope                      reason            opened by
    graph:<graph host>         graph_outage      sendMail 5xx, 408, connect errors, timeouts, resets
    mailbox:<app>:<mailbox>    mailbox_outage    the same, for one (app, mailbox)
    entra:<authority host>     entra_outage      token endpoint 5xx, Entra ID unreachable
    relay                      relay_outage      SMTP 421, connection refused, lost or timed out

A 429 is not a failure here (Retry-After blocks the mailbox already), nor is a per-message 4xx: the
service answered. A run of `breaker_failure_threshold` such failures in one process, each within
`breaker_run_window_s` of the previous one and without a success between them, opens the scope for
the fleet. Runs are counted in process, so a successful send costs no Redis call.

State in Redis:

    tm:brk:state            hash scope -> "open:<opened_ms>" | "ramp:<closed_ms>", and the field `_kept`
                            (when the dispatcher first wrote it) that says the hash has not been lost
    tm:brk:probe:<scope>    the id of the one row let through an open scope, SET NX PX probe interval

The dispatcher (`BreakerBoard`) reads the hash every tick: rows whose scope is open stay in the
database (shown `retry_wait` with the reason), except one probe row per open scope per interval,
which it names in `tm:brk:probe:<scope>`. Workers (`Breakers`) re-read the hash every
`breaker_refresh_ms` and requeue, without an attempt, rows of an open scope that are not its probe
(those published before it opened). A probe that is answered closes the scope (a Graph host's closes
the mailbox scopes that opened during its outage with it): it becomes `ramp`,
and the dispatcher lets at most `breaker_ramp_start` rows of it be in flight, doubling every
`breaker_ramp_step_ms` until `breaker_ramp_max`, when the entry is dropped. Nothing here fails a
notification: rows held back are `Requeued`, and failed attempts are transient (time-based retries).

If Redis loses the hash (flushed, or failed over to an empty replica) during an outage, closing every
breaker would release the whole backlog at once against a host still down: every row dispatched and
sent before a run of failures per process opens the scope again. So the dispatcher, finding the hash
without `_kept`, seeds it from the database: each scope whose rows still wait there with its outage's
`wait_reason` comes back as `ramp` (HSETNX: a scope a worker has opened again meanwhile stays open),
and the backlog goes out at the ramp's pace; a scope still down meets at most the ramp's window before
its failures open it again, a scope that recovered meanwhile is back to full speed within the ramp.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import structlog
from sqlalchemy import Connection, func, select

from shared.clouds import resolve_cloud
from shared.codes import Code
from shared.errors import AmbiguousOutcome, DeliveryError, RedisUnavailable, Throttled, TokenError, TransientError
from shared.metrics import metrics
from shared.models import ACTIVE_STATES, Notification, ProviderConfig, WaitReason
from shared.providers import PlatformProvider, Provider
from shared.settings import Settings
from transport.redis_errors import redis_boundary

log = structlog.get_logger(__name__)
STATE_KEY = "tm:brk:state"
KEPT_FIELD = "_kept"  # in STATE_KEY while the hash has not been lost since the dispatcher wrote it
RELAY_SCOPE = "relay"
_P = ProviderConfig.__table__  # type: ignore[attr-defined]
_N = Notification.__table__  # type: ignore[attr-defined]
_REASONS = {"graph": WaitReason.GRAPH_OUTAGE, "mailbox": WaitReason.MAILBOX_OUTAGE,
            "entra": WaitReason.ENTRA_OUTAGE, "relay": WaitReason.RELAY_OUTAGE}
_FAILURE_STATUSES = frozenset({408, 500, 502, 503, 504})
_NOT_THE_SERVICE = frozenset({Code.TOKEN_LOCK_TIMEOUT.value, Code.INTERNAL_ERROR.value})  # ours, not an outage

_OPEN = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and string.sub(cur, 1, 4) == 'open' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], 'open:' .. ARGV[2])
return 1
"""
_CLOSE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur or string.sub(cur, 1, 4) ~= 'open' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], 'ramp:' .. ARGV[2])
redis.call('DEL', KEYS[2])
if ARGV[3] ~= '' then
  local since = tonumber(string.sub(cur, 6)) - tonumber(ARGV[4])
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    local k, v = all[i], all[i + 1]
    local dependent = string.sub(k, 1, #ARGV[3]) == ARGV[3] and string.sub(v, 1, 5) == 'open:'
    if dependent and tonumber(string.sub(v, 6)) >= since then
      redis.call('HSET', KEYS[1], k, 'ramp:' .. ARGV[2])
      redis.call('DEL', 'tm:brk:probe:' .. k)
    end
  end
end
return 1
"""
_END_RAMP = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""
_TAKE_PROBE = """
for i = 1, #KEYS do if redis.call('EXISTS', KEYS[i]) == 1 then return 0 end end
for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2]) end
return 1
"""


def probe_key(scope: str) -> str:
    """Where the row allowed through an open `scope` is named."""
    return f"tm:brk:probe:{scope}"


def reason_of(scope: str) -> WaitReason:
    """The wait reason rows held back by `scope` show."""
    return _REASONS[scope.split(":", 1)[0]]


def _scope_of(scopes: Scopes, reason: str) -> str | None:
    """The scope of a tenant's that rows waiting with `reason` waited for."""
    if reason == WaitReason.ENTRA_OUTAGE.value:
        return scopes.entra
    kind = next((k for k, r in _REASONS.items() if r.value == reason), "")
    return next((s for s in scopes.send if s.split(":", 1)[0] == kind), None)


def _host(url: str) -> str:
    return urlsplit(url).netloc.lower()


@dataclass(frozen=True, slots=True)
class Scopes:
    """The breaker scopes a tenant's rows go through: `send` always, `entra` only to get a token."""

    send: tuple[str, ...]
    entra: str | None = None
    token_key: str | None = None


def provider_scopes(provider: Provider) -> Scopes:
    """The scopes of a resolved provider (workers)."""
    if isinstance(provider, PlatformProvider):
        return Scopes((RELAY_SCOPE,))
    return Scopes((f"graph:{_host(provider.cloud.graph_base)}", f"mailbox:{provider.mailbox_key}"),
                  f"entra:{_host(provider.cloud.authority_host)}", provider.token_key)


def config_scopes(tenant_id: str, row: Any | None, settings: Settings) -> Scopes:
    """The scopes of a tenant from its provider_config row in force, without decrypting anything
    (the dispatcher); a tenant without one is on the platform default."""
    if row is None or row.kind == "platform" or not (row.client_id and row.sender_address):
        return Scopes((RELAY_SCOPE,))
    cloud = resolve_cloud(row.cloud, settings)
    return Scopes((f"graph:{_host(cloud.graph_base)}", f"mailbox:{row.client_id}:{row.sender_address.lower()}"),
                  f"entra:{_host(cloud.authority_host)}", f"{tenant_id}:{row.client_id}:{row.version}")


def is_transport_failure(error: DeliveryError | None) -> bool:
    """Whether an error says the service is unreachable or failing as a whole (counts toward opening)."""
    if error is None or isinstance(error, Throttled | RedisUnavailable) or error.code in _NOT_THE_SERVICE:
        return False
    if error.status is None:  # connect errors, timeouts, resets: no answer at all
        return isinstance(error, TransientError | AmbiguousOutcome)
    return error.status in _FAILURE_STATUSES or error.status == 421


def is_answer(error: DeliveryError | None) -> bool:
    """Whether the service answered normally (closes an open scope): a success or a per-message refusal."""
    if error is None or isinstance(error, TokenError):  # Entra ID refusing a credential answered
        return True
    return error.status is not None and not is_transport_failure(error) and not isinstance(error, Throttled)


def _parse(states: dict[Any, Any]) -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    for scope, value in states.items():
        scope = scope.decode() if isinstance(scope, bytes) else str(scope)
        value = value.decode() if isinstance(value, bytes) else str(value)
        if scope == KEPT_FIELD:
            continue
        kind, _, at = value.partition(":")
        out[scope] = (kind, int(at or 0))
    return out


@dataclass(slots=True)
class _Run:
    count: int = 0
    last_s: float = 0.0


class Breakers:
    """A worker process's view of the breakers: gates rows, counts runs, opens and closes scopes."""

    def __init__(self, redis: Any, settings: Settings) -> None:
        self._redis = redis
        self._s = settings
        self._open = redis.register_script(_OPEN)
        self._close = redis.register_script(_CLOSE)
        self._states: dict[str, tuple[str, int]] = {}
        self._read_at = 0.0
        self._stale = 0  # bumped when what is read must be read again (a read in flight is too old)
        self._reading: asyncio.Future[None] | None = None
        self._runs: dict[str, _Run] = {}

    async def _current(self) -> dict[str, tuple[str, int]]:
        if time.monotonic() - self._read_at >= self._s.breaker_refresh_ms / 1000:
            # One read at a time: every send that finds the view stale waits for the same answer.
            if self._reading is None:
                self._reading = asyncio.ensure_future(self._read())
            await asyncio.shield(self._reading)
        return self._states

    async def _read(self) -> None:
        stale = self._stale
        try:
            with redis_boundary("breakers"):
                states = _parse(await self._redis.hgetall(STATE_KEY))
            self._states = states
            if stale == self._stale:
                self._read_at = time.monotonic()
        finally:
            self._reading = None

    async def gate(self, scopes: Sequence[str], row_id: str) -> WaitReason | None:
        """None when the row may go; else the reason it waits (an open scope it is not the probe of).
        Fails open: with Redis unreachable the send's own Redis calls decide."""
        if not self._s.breaker_enabled:
            return None
        try:
            states = await self._current()
            opened = [s for s in scopes if states.get(s, ("",))[0] == "open"]
            if not opened:
                return None
            with redis_boundary("breakers"):
                probes = await self._redis.mget([probe_key(s) for s in opened])
        except RedisUnavailable:
            return None
        for scope, probe in zip(opened, probes, strict=True):
            if (probe.decode() if isinstance(probe, bytes) else probe) != row_id:
                metrics.breaker_requeued.labels(reason_of(scope).value).inc()
                return reason_of(scope)
        return None

    async def is_open(self, scope: str) -> bool:
        """Whether `scope` is open as far as this process knows."""
        try:
            return (await self._current()).get(scope, ("",))[0] == "open"
        except RedisUnavailable:
            return False

    async def observe(self, scopes: Iterable[str], error: DeliveryError | None) -> None:
        """Count an attempt's outcome against `scopes`; open or close them when it says so. Never raises."""
        if not self._s.breaker_enabled:
            return
        for scope in scopes:
            try:
                if is_transport_failure(error):
                    await self._failed(scope, error)
                elif is_answer(error):
                    await self._answered(scope)
            except RedisUnavailable:
                log.warning("breaker.redis_unavailable", scope=scope)

    async def _failed(self, scope: str, error: DeliveryError | None) -> None:
        now = time.time()
        run = self._runs.setdefault(scope, _Run())
        run.count = run.count + 1 if now - run.last_s <= self._s.breaker_run_window_s else 1
        run.last_s = now
        if run.count < self._s.breaker_failure_threshold or self._states.get(scope, ("",))[0] == "open":
            return
        run.count = 0
        now_ms = int(now * 1000)
        with redis_boundary("breakers"):
            opened = await self._open(keys=[STATE_KEY], args=[scope, now_ms])
        self._states[scope] = ("open", now_ms)
        if opened:
            metrics.breaker_transitions.labels(scope.split(":", 1)[0], "open").inc()
            log.warning("breaker.opened", scope=scope, reason=reason_of(scope).value,
                        failures=self._s.breaker_failure_threshold, code=error.code if error else None,
                        status=error.status if error else None)

    async def _answered(self, scope: str) -> None:
        self._runs.pop(scope, None)
        if self._states.get(scope, ("",))[0] != "open":
            return
        now_ms = int(time.time() * 1000)
        # The (app, mailbox) scopes that opened during a Graph host's outage failed because of it: they
        # close with it, rather than each waiting for a probe of its own.
        dependents = "mailbox:" if scope.startswith("graph:") else ""
        with redis_boundary("breakers"):
            closed = await self._close(keys=[STATE_KEY, probe_key(scope)],
                                       args=[scope, now_ms, dependents, int(self._s.breaker_run_window_s * 1000)])
        if closed and dependents:
            self._read_at, self._stale = 0.0, self._stale + 1  # re-read: mailbox scopes closed with it
        self._states[scope] = ("ramp", now_ms)
        if closed:
            metrics.breaker_transitions.labels(scope.split(":", 1)[0], "closed").inc()
            log.warning("breaker.closed", scope=scope, reason=reason_of(scope).value)


@dataclass(slots=True)
class Plan:
    """What the breakers allow in one dispatch tick."""

    blocked: dict[str, WaitReason] = field(default_factory=dict)  # tenant -> why its rows wait
    open_scopes: dict[str, list[str]] = field(default_factory=dict)  # open scope -> its tenants
    ramp_room: dict[str, int] = field(default_factory=dict)  # ramping scope -> rows it may take now
    tenant_ramps: dict[str, list[str]] = field(default_factory=dict)  # tenant -> its ramping scopes
    tenant_open: dict[str, list[str]] = field(default_factory=dict)  # tenant -> its open scopes
    configured: set[str] = field(default_factory=set)  # tenants with a provider row (others: platform default)
    relay: tuple[str, int] | None = None  # the relay's state, for tenants without a provider row

    def open_of(self, tenant_id: str) -> list[str]:
        """The open scopes `tenant_id`'s rows go through."""
        if tenant_id not in self.configured:
            return [RELAY_SCOPE] if self.relay and self.relay[0] == "open" else []
        return self.tenant_open.get(tenant_id, [])

    def admit(self, tenant_id: str) -> bool:
        """Take one row of `tenant_id` if every ramping scope it goes through has room."""
        ramps: Sequence[str] = self.tenant_ramps.get(tenant_id, ())
        if tenant_id not in self.configured and self.relay and self.relay[0] == "ramp":
            ramps = [RELAY_SCOPE]
        if any(self.ramp_room[s] <= 0 for s in ramps):
            return False
        for s in ramps:
            self.ramp_room[s] -= 1
        return True


class BreakerBoard:
    """The dispatcher's side: which tenants' rows wait, which row probes, how far a ramp has come."""

    def __init__(self, redis_sync: Any, settings: Settings) -> None:
        self._redis = redis_sync
        self._s = settings
        self._end_ramp = redis_sync.register_script(_END_RAMP)
        self._take_probe = redis_sync.register_script(_TAKE_PROBE)
        self._configs: dict[str, Any] = {}
        self._configs_at = 0.0
        self._tokens: set[str] = set()  # token keys cached in Redis, when an Entra ID scope is open
        self._tokens_at = 0.0

    def plan(self, conn: Connection, inflight: dict[str, int], now_ms: int) -> Plan | None:
        """None when every breaker is closed (one HGETALL); else who waits and how much each ramp may take."""
        if not self._s.breaker_enabled:
            return None
        raw = self._redis.hgetall(STATE_KEY)
        if KEPT_FIELD not in raw and KEPT_FIELD.encode() not in raw:
            raw = self._reseed(conn, now_ms)
        states = _parse(raw)
        states = {s: v for s, v in states.items() if v[0] == "open" or self._ramping(s, v[1], now_ms)}
        if not states:
            return None
        scopes_of = self._tenant_scopes(conn)
        plan = Plan(configured=set(scopes_of), relay=states.get(RELAY_SCOPE))
        ramp_inflight: dict[str, int] = {}
        self._read_tokens(scopes_of, states)
        for tenant_id, scopes in scopes_of.items():
            for scope in self._open_for(tenant_id, scopes, states):
                plan.open_scopes.setdefault(scope, []).append(tenant_id)
                plan.tenant_open.setdefault(tenant_id, []).append(scope)
                plan.blocked.setdefault(tenant_id, reason_of(scope))
            for scope in (s for s in scopes.send if states.get(s, ("",))[0] == "ramp"):
                plan.tenant_ramps.setdefault(tenant_id, []).append(scope)
                ramp_inflight[scope] = ramp_inflight.get(scope, 0) + inflight.get(tenant_id, 0)
        for scope, (kind, at) in states.items():
            if kind == "ramp":
                plan.ramp_room[scope] = self._window(at, now_ms) - ramp_inflight.get(scope, 0)
        return plan

    def _reseed(self, conn: Connection, now_ms: int) -> dict[Any, Any]:
        """The hash is gone (or was never written): scopes whose rows wait in the database with an outage's
        reason come back ramping, then `_kept` is set. Returns the hash as it is now."""
        waiting = conn.execute(select(_N.c.tenant_id, _N.c.wait_reason).distinct().where(
            _N.c.state.in_(ACTIVE_STATES), _N.c.wait_reason.in_(sorted(r.value for r in _REASONS.values())))).all()
        scopes_of = self._tenant_scopes(conn)
        seeded = sorted({scope for tenant_id, reason in waiting
                         if (scope := _scope_of(scopes_of.get(tenant_id, Scopes((RELAY_SCOPE,))), reason))})
        pipe = self._redis.pipeline(transaction=False)
        for scope in seeded:
            pipe.hsetnx(STATE_KEY, scope, f"ramp:{now_ms}")
        pipe.hsetnx(STATE_KEY, KEPT_FIELD, str(now_ms))
        pipe.hgetall(STATE_KEY)
        raw: dict[Any, Any] = pipe.execute()[-1]
        if seeded:
            for scope in seeded:
                metrics.breaker_transitions.labels(scope.split(":", 1)[0], "reseeded").inc()
            log.warning("breaker.reseeded", scopes=seeded, reason="breaker state lost from Redis; rows still wait "
                        "on these outages in the database, so they ramp up instead of going out at once")
        return raw

    def _open_for(self, tenant_id: str, scopes: Scopes, states: dict[str, tuple[str, int]]) -> list[str]:
        opened = [s for s in scopes.send if states.get(s, ("",))[0] == "open"]
        if scopes.entra and states.get(scopes.entra, ("",))[0] == "open" and scopes.token_key not in self._tokens:
            opened.insert(0, scopes.entra)  # Entra ID matters only to tenants without a cached token
        return opened

    def _read_tokens(self, scopes_of: dict[str, Scopes], states: dict[str, tuple[str, int]]) -> None:
        """Which tenants behind an open Entra ID scope have a token in Redis (one pipeline, once a second)."""
        if time.monotonic() - self._tokens_at < 1.0:
            return
        keys = [sc.token_key for sc in scopes_of.values()
                if sc.entra and sc.token_key and states.get(sc.entra, ("",))[0] == "open"]
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.exists(f"tm:tok:{key}")
        self._tokens = {key for key, found in zip(keys, pipe.execute() if keys else [], strict=True) if found}
        self._tokens_at = time.monotonic()

    def _ramping(self, scope: str, closed_ms: int, now_ms: int) -> bool:
        if self._window(closed_ms, now_ms) < self._s.breaker_ramp_max:
            return True
        self._end_ramp(keys=[STATE_KEY], args=[scope, f"ramp:{closed_ms}"])
        return False

    def _window(self, closed_ms: int, now_ms: int) -> int:
        steps = max(0, now_ms - closed_ms) / max(1, self._s.breaker_ramp_step_ms)
        return int(self._s.breaker_ramp_start * 2 ** min(steps, 30))

    def _tenant_scopes(self, conn: Connection) -> dict[str, Scopes]:
        # Every tenant's provider in force, re-read at most once a second while a breaker is open or ramping.
        if time.monotonic() - self._configs_at >= 1.0:
            latest = (select(_P.c.tenant_id, func.max(_P.c.version).label("v")).where(_P.c.active.is_(True))
                      .group_by(_P.c.tenant_id).subquery())
            rows = conn.execute(select(_P.c.tenant_id, _P.c.version, _P.c.kind, _P.c.cloud, _P.c.client_id,
                                       _P.c.sender_address)
                                .join(latest, (_P.c.tenant_id == latest.c.tenant_id) & (_P.c.version == latest.c.v))
                                ).all()
            self._configs = {r.tenant_id: config_scopes(r.tenant_id, r, self._s) for r in rows}
            self._configs_at = time.monotonic()
        return self._configs

    def take_probe(self, scopes: Sequence[str], row_id: str) -> bool:
        """Name `row_id` the probe of every one of `scopes` if none has a probe in flight (fleet-wide, NX)."""
        took = bool(self._take_probe(keys=[probe_key(s) for s in scopes],
                                     args=[row_id, self._s.breaker_probe_interval_ms]))
        if took:
            for scope in scopes:
                metrics.breaker_probes.labels(scope.split(":", 1)[0]).inc()
            log.info("breaker.probe", scopes=list(scopes), notification_id=row_id)
        return took
