"""DNS lookups for the sender-domain checks: the one boundary where dnspython's exceptions become outcomes.

A check needs to say what happened, not raise: a name that does not exist (NXDOMAIN), one that exists
without the record type (no data), a server failure (SERVFAIL, often a DNSSEC or delegation fault) and no
answer in time are all results to show the admin. The resolver is the server's setting
(`TENANTMAIL_DNS_RESOLVER`), never chosen by a tenant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import dns.exception
import dns.resolver

from shared.settings import Settings

Outcome = Literal["ok", "nodata", "nxdomain", "servfail", "timeout"]


@dataclass(frozen=True, slots=True)
class Answer:
    """What a lookup of one name and type gave: the records' texts when `outcome` is ok."""

    name: str
    outcome: Outcome
    records: tuple[str, ...] = ()


class DnsLookup:
    """TXT and CNAME lookups through the configured resolver, each within `dns_timeout_s`."""

    def __init__(self, settings: Settings) -> None:
        self._timeout_s = settings.dns_timeout_s
        if settings.dns_resolver:
            host, _, port = settings.dns_resolver.rpartition(":")
            self._resolver = dns.resolver.Resolver(configure=False)
            self._resolver.nameservers = [host.strip("[]")]
            self._resolver.port = int(port)
        else:
            self._resolver = dns.resolver.Resolver()
        self._resolver.cache = None  # our own cache keeps results for the checks' time, not the records' TTL

    def txt(self, name: str) -> Answer:
        """The TXT strings at `name` (each record's parts joined)."""
        return self._lookup(name, "TXT")

    def cname(self, name: str) -> Answer:
        """The CNAME target of `name`, without the final dot."""
        return self._lookup(name, "CNAME")

    def _lookup(self, name: str, rdtype: str) -> Answer:
        try:
            answer = self._resolver.resolve(name, rdtype, lifetime=self._timeout_s, search=False)
        except dns.resolver.NXDOMAIN:
            return Answer(name, "nxdomain")
        except dns.resolver.NoAnswer:
            return Answer(name, "nodata")
        except dns.resolver.NoNameservers:  # every server answered SERVFAIL or refused
            return Answer(name, "servfail")
        except dns.exception.Timeout:
            return Answer(name, "timeout")
        return Answer(name, "ok", tuple(_text(rdata, rdtype) for rdata in answer))


def _text(rdata: object, rdtype: str) -> str:
    if rdtype == "TXT":
        return b"".join(getattr(rdata, "strings", ())).decode("utf-8", "replace")
    return str(getattr(rdata, "target", rdata)).rstrip(".").lower()
