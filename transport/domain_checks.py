"""Sender-domain checks: SPF, DKIM and DMARC of the domain a tenant sends from, each pass/warn/fail with its fix.

Receivers judge our mail by these records, so a wrong one shows up as spam or rejection long after a
save succeeded. The checks never block a save: they are shown beside it. What each check wants:

- SPF: one `v=spf1` record reaching the sending service's include passes; a relay include not configured
  on this server, or no answer in time, warns; none, several, the include missing, or SERVFAIL fail.
- DKIM (Graph only): `selector1` and `selector2._domainkey` CNAMEs to Microsoft's hosts pass; only one
  warns; neither, or one pointing elsewhere, fails.
- DMARC: `_dmarc` with `p=quarantine` or `p=reject` passes; `p=none` (monitoring only) warns; none, or
  no `p=`, fails.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from transport.dns_records import Answer, DnsLookup

Status = Literal["pass", "warn", "fail"]
# Microsoft 365's SPF include and the hosts its DKIM CNAMEs point at, per cloud.
SPF_INCLUDE = {"global": "spf.protection.outlook.com", "usgov_high": "spf.protection.office365.us",
               "usgov_dod": "spf.protection.office365.us", "china": "spf.protection.partner.outlook.cn"}
DKIM_HOSTS = {"global": (".onmicrosoft.com", ".dkim.mail.microsoft"), "usgov_high": (".onmicrosoft.us",),
              "usgov_dod": (".onmicrosoft.us",), "china": (".partner.onmschina.cn",)}
_SPF_LOOKUPS = 10  # RFC 7208 §4.6.4: receivers give up after 10 DNS-querying terms
_UNREADABLE = {"servfail": "the DNS server failed (SERVFAIL: often a DNSSEC or delegation fault)",
               "timeout": "no DNS answer in time"}


@dataclass(frozen=True, slots=True)
class DomainCheck:
    """One check's verdict, what was found and, unless it passed, how to fix it."""

    check: str  # "spf" | "dkim" | "dmarc"
    status: Status
    name: str  # the DNS name looked up
    message: str
    fix: str | None = None
    found: str | None = None


def check_domain(lookup: DnsLookup, sender_address: str, *, via_graph: bool, cloud: str = "global",
                 relay_include: str | None = None) -> dict[str, Any]:
    """The report for the domain of `sender_address`: `{domain, checked_at, results: [DomainCheck...]}`."""
    domain = sender_address.rsplit("@", 1)[-1].lower().rstrip(".")
    include = SPF_INCLUDE.get(cloud, SPF_INCLUDE["global"]) if via_graph else relay_include
    results = [spf(lookup, domain, include, service="Microsoft 365" if via_graph else "the platform's relay")]
    if via_graph:
        results.append(dkim(lookup, domain, DKIM_HOSTS.get(cloud, DKIM_HOSTS["global"])))
    results.append(dmarc(lookup, domain))
    return {"domain": domain, "checked_at": datetime.now(UTC).isoformat(),
            "results": [asdict(r) for r in results]}


def spf(lookup: DnsLookup, domain: str, include: str | None, *, service: str) -> DomainCheck:
    """SPF: exactly one `v=spf1` record at the domain that reaches `include` (directly or through includes)."""
    answer = lookup.txt(domain)
    records = [r for r in answer.records if r.lower().startswith("v=spf1")]
    want = f"include:{include}" if include else "your sending service's include"
    add = f'add a TXT record at {domain}: "v=spf1 {want} -all"'
    if answer.outcome in _UNREADABLE:
        return _unreadable("spf", answer, f"check the name servers of {domain}, then look again")
    if answer.outcome == "nxdomain":
        return DomainCheck("spf", "fail", domain, f"{domain} does not exist in DNS (NXDOMAIN)",
                           f"check the sender address's domain, or create the zone and {add}")
    if not records:
        return DomainCheck("spf", "fail", domain, "no SPF record", add)
    if len(records) > 1:
        return DomainCheck("spf", "fail", domain, f"{len(records)} SPF records: receivers treat that as an error "
                           "(permerror)", f"merge them into one record that has {want}", " | ".join(records))
    if include is None:
        return DomainCheck("spf", "warn", domain, "the relay's SPF include is not configured on this server, so "
                           "it cannot be checked", "set TENANTMAIL_PLATFORM_SPF_INCLUDE", records[0])
    if _reaches(lookup, records[0], include.lower(), [_SPF_LOOKUPS]):
        return DomainCheck("spf", "pass", domain, f"SPF includes {include}", found=records[0])
    return DomainCheck("spf", "fail", domain, f"SPF does not include {include}: receivers see {service}'s mail "
                       "as not authorised", f"add include:{include} before the all term of the record at {domain}",
                       records[0])


def _reaches(lookup: DnsLookup, record: str, include: str, budget: list[int]) -> bool:
    # Depth-first through include: and redirect=, within the 10 lookups receivers allow.
    for term in record.lower().split()[1:]:
        target = term.split(":", 1)[1] if term.lstrip("+-~?").startswith("include:") else (
            term.split("=", 1)[1] if term.startswith("redirect=") else None)
        if target is None:
            continue
        if target == include:
            return True
        budget[0] -= 1
        if budget[0] < 0:
            return False
        nested = [r for r in lookup.txt(target).records if r.lower().startswith("v=spf1")]
        if nested and _reaches(lookup, nested[0], include, budget):
            return True
    return False


def dkim(lookup: DnsLookup, domain: str, hosts: tuple[str, ...]) -> DomainCheck:
    """DKIM for Microsoft 365: both selectors' CNAMEs point at Microsoft's DKIM hosts."""
    answers = [lookup.cname(f"{s}._domainkey.{domain}") for s in ("selector1", "selector2")]
    names = " and ".join(a.name for a in answers)
    fix = (f"in Microsoft Defender (Email authentication settings > DKIM) copy the two CNAMEs for {domain}, "
           f"create them in DNS ({names}), then enable signing")
    broken = next((a for a in answers if a.outcome in _UNREADABLE), None)
    if broken is not None:
        return _unreadable("dkim", broken, f"check the name servers of {domain}, then look again")
    good = [a for a in answers if a.outcome == "ok" and a.records[0].endswith(hosts)]
    found = " | ".join(f"{a.name} → {a.records[0]}" for a in answers if a.outcome == "ok") or None
    elsewhere = [a for a in answers if a.outcome == "ok" and a not in good]
    if elsewhere:
        return DomainCheck("dkim", "fail", names, f"{elsewhere[0].name} points to {elsewhere[0].records[0]}, not to "
                           "Microsoft 365: its signatures will not verify", fix, found)
    if len(good) == 2:
        return DomainCheck("dkim", "pass", names, "both selectors point to Microsoft 365", found=found)
    if good:
        return DomainCheck("dkim", "warn", names, "only one selector is published: key rotation will break "
                           "signing", fix, found)
    return DomainCheck("dkim", "fail", names, "no DKIM CNAMEs: mail is unsigned for your domain", fix)


def dmarc(lookup: DnsLookup, domain: str) -> DomainCheck:
    """DMARC: a `v=DMARC1` record at `_dmarc.<domain>` with an enforcing `p=` policy."""
    name = f"_dmarc.{domain}"
    answer = lookup.txt(name)
    add = f'add a TXT record at {name}: "v=DMARC1; p=quarantine; rua=mailto:dmarc@{domain}"'
    if answer.outcome in _UNREADABLE:
        return _unreadable("dmarc", answer, f"check the name servers of {domain}, then look again")
    records = [r for r in answer.records if r.replace(" ", "").lower().startswith("v=dmarc1")]
    if not records:
        return DomainCheck("dmarc", "fail", name, "no DMARC record", add)
    tags = dict(t.strip().lower().partition("=")[::2] for t in records[0].split(";") if "=" in t)
    policy = tags.get("p")
    if policy in ("quarantine", "reject"):
        return DomainCheck("dmarc", "pass", name, f"DMARC policy p={policy}", found=records[0])
    if policy == "none":
        return DomainCheck("dmarc", "warn", name, "DMARC policy p=none: failures are only reported, never "
                           "enforced", f"once reports show your mail passing, set p=quarantine in {name}", records[0])
    return DomainCheck("dmarc", "fail", name, "the DMARC record has no valid p= policy", add, records[0])


def _unreadable(check: str, answer: Answer, fix: str) -> DomainCheck:
    status: Status = "fail" if answer.outcome == "servfail" else "warn"
    return DomainCheck(check, status, answer.name, f"could not check {answer.name}: {_UNREADABLE[answer.outcome]}",
                       fix)


class DomainCheckCache:
    """Reports kept for `ttl_s` (in process), so a page view does not query DNS each time."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._items: dict[tuple[str, ...], tuple[float, dict[str, Any]]] = {}

    def get(self, key: tuple[str, ...]) -> dict[str, Any] | None:
        """The cached report, unless expired."""
        with self._lock:
            item = self._items.get(key)
        return item[1] if item is not None and item[0] > time.monotonic() else None

    def put(self, key: tuple[str, ...], report: dict[str, Any]) -> None:
        """Keep `report` for the cache's time."""
        with self._lock:
            if len(self._items) > 10_000:  # a bound, not an LRU: expired entries go first
                now = time.monotonic()
                self._items = {k: v for k, v in self._items.items() if v[0] > now}
            self._items[key] = (time.monotonic() + self._ttl_s, report)
