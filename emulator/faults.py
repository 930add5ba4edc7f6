"""Injected faults: next-N or probability, selected by route, tenant, mailbox and app."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ROUTES = frozenset({"sendMail", "token", "discovery", "draft", "uploadSession", "uploadChunk", "sendDraft",
                    "deleteMessage", "*"})
KINDS = frozenset(
    {
        "429",
        "500",
        "503",
        "504",
        "504_after_commit",
        "reset",
        "reset_after_commit",
        "latency",
        "hold",
        "status",
    }
)


@dataclass
class Fault:
    """One fault rule. `count` None with `probability` None means every matching request."""

    id: str
    kind: str
    route: str = "*"
    tenant: str | None = None
    mailbox: str | None = None
    app_id: str | None = None
    count: int | None = None
    probability: float | None = None
    # A header value ("2", "2.128"), None for no header, or {"min_s", "max_s"}: a fresh uniform
    # value per response (3 decimals, as Graph sends fractions), e.g. Retry-After 1-3 s.
    retry_after: str | dict[str, float] | None = "1"
    body: str = "json"
    latency_ms: Any = 0
    status: int | None = None
    code: str | None = None
    message: str | None = None
    hits: int = 0
    gate: asyncio.Event | None = field(default=None, repr=False)

    def public(self) -> dict[str, Any]:
        """JSON view."""
        return {k: v for k, v in self.__dict__.items() if k != "gate"}

    def selects(self, route: str, tenant_keys: set[str], mailbox_keys: set[str], app_id: str | None) -> bool:
        """Whether the request is in this fault's scope."""
        return (
            (self.route == "*" or self.route == route)
            and (self.tenant is None or self.tenant.lower() in tenant_keys)
            and (self.mailbox is None or self.mailbox.lower() in mailbox_keys)
            and (self.app_id is None or (app_id is not None and self.app_id.lower() == app_id.lower()))
        )

    def latency_s(self, rng: Callable[[], float]) -> float:
        """Delay this fault adds: fixed ms, {min_ms, max_ms} uniform or {mean_ms} exponential."""
        spec = self.latency_ms
        if isinstance(spec, dict):
            if "mean_ms" in spec:
                return -float(spec["mean_ms"]) * math.log(1.0 - rng()) / 1000.0
            low, high = float(spec.get("min_ms", 0)), float(spec.get("max_ms", 0))
            return (low + (high - low) * rng()) / 1000.0
        return float(spec or 0) / 1000.0

    def for_request(self, rng: Callable[[], float]) -> Fault:
        """This rule as it answers one request: a Retry-After range becomes one value."""
        spec = self.retry_after
        if not isinstance(spec, dict):
            return self
        low, high = spec["min_s"], spec["max_s"]
        return dataclasses.replace(self, retry_after=f"{low + (high - low) * rng():.3f}")


def _retry_after(value: Any) -> str | dict[str, float] | None:
    if value is None:
        return None
    if isinstance(value, dict):
        if set(value) != {"min_s", "max_s"}:
            raise ValueError("retry_after range must be {\"min_s\": n, \"max_s\": n}")
        low, high = float(value["min_s"]), float(value["max_s"])
        if not 0 <= low <= high:
            raise ValueError("retry_after range needs 0 <= min_s <= max_s")
        return {"min_s": low, "max_s": high}
    return str(value)


def build_fault(fault_id: str, spec: dict[str, Any]) -> Fault:
    """Validate a fault spec from the control API."""
    spec = dict(spec)
    kind = str(spec.pop("kind"))
    if kind not in KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; one of {sorted(KINDS)}")
    route = str(spec.pop("route", "*"))
    if route not in ROUTES:
        raise ValueError(f"unknown route {route!r}; one of {sorted(ROUTES)}")
    if "retry_after" in spec:
        spec["retry_after"] = _retry_after(spec["retry_after"])
    if spec.get("body", "json") not in ("json", "html"):
        raise ValueError("body must be 'json' or 'html'")
    allowed = set(Fault.__dataclass_fields__) - {"id", "kind", "route", "hits", "gate"}
    unknown = set(spec) - allowed
    if unknown:
        raise ValueError(f"unknown fault fields {sorted(unknown)}")
    fault = Fault(id=fault_id, kind=kind, route=route, **spec)
    if kind == "hold":
        fault.gate = asyncio.Event()
    return fault


@dataclass
class Hit:
    """What the faults decided for one request."""

    delay_s: float = 0.0
    fault: Fault | None = None
    gates: list[asyncio.Event] = field(default_factory=list)


class Faults:
    """The active fault rules, in insertion order."""

    def __init__(self, rng: Callable[[], float]) -> None:
        self._rng = rng
        self.rules: list[Fault] = []

    def add(self, fault: Fault) -> Fault:
        """Activate a rule."""
        self.rules.append(fault)
        return fault

    def clear(self) -> None:
        """Drop every rule, releasing held requests."""
        self.release()
        self.rules.clear()

    def remove(self, fault_id: str) -> bool:
        """Drop one rule; True if it existed."""
        for fault in self.rules:
            if fault.id == fault_id:
                if fault.gate is not None:
                    fault.gate.set()
                self.rules.remove(fault)
                return True
        return False

    def release(self) -> int:
        """Let every held request continue; returns how many gates were opened."""
        gates = [f.gate for f in self.rules if f.gate is not None and not f.gate.is_set()]
        for gate in gates:
            gate.set()
        return len(gates)

    def match(self, route: str, tenant_keys: set[str], mailbox_keys: set[str], app_id: str | None) -> Hit:
        """Consume the rules that fire for this request: all latency/hold rules, the first other one."""
        hit = Hit()
        if not self.rules:
            return hit
        for fault in list(self.rules):
            if fault.count is not None and fault.count <= 0:
                continue  # an exhausted hold rule, kept only so its gate can be released
            if not fault.selects(route, tenant_keys, mailbox_keys, app_id) or not self._fires(fault):
                continue
            if fault.kind == "latency":
                hit.delay_s += fault.latency_s(self._rng)
            elif fault.kind == "hold":
                assert fault.gate is not None
                hit.gates.append(fault.gate)
            elif hit.fault is None:
                hit.fault = fault.for_request(self._rng)
            else:
                continue
            self._consume(fault)
        return hit

    def _fires(self, fault: Fault) -> bool:
        if fault.probability is not None:
            return self._rng() < fault.probability
        return True

    def _consume(self, fault: Fault) -> None:
        fault.hits += 1
        if fault.count is not None:
            fault.count -= 1
            if fault.count <= 0 and fault.kind != "hold":
                self.rules.remove(fault)
