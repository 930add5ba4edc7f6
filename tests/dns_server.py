"""A real authoritative DNS server on loopback for the sender-domain checks, built on dnslib.

`DnsServer(zone_text)` answers UDP and TCP on one free port from a zone file. Beside plain answers it
injects the faults the checks must survive, by name: every name under a `servfail` domain answers
SERVFAIL, every name under a `drop` domain gets no answer at all (a timeout). A name with records of
other types answers NOERROR with no data; an unknown one NXDOMAIN, as a real server would.
"""

from __future__ import annotations

from typing import Any

from dnslib import QTYPE, RCODE, RR, DNSLabel
from dnslib.server import BaseResolver, DNSError, DNSLogger, DNSServer

GOOD_ZONE = """
contoso.example.                      300 IN TXT   "v=spf1 include:spf.protection.outlook.com -all"
contoso.example.                      300 IN TXT   "MS=ms12345678"
selector1._domainkey.contoso.example. 300 IN CNAME selector1-contoso-example._domainkey.contoso.onmicrosoft.com.
selector2._domainkey.contoso.example. 300 IN CNAME selector2-contoso-example._domainkey.contoso.onmicrosoft.com.
_dmarc.contoso.example.               300 IN TXT   "v=DMARC1; p=quarantine; rua=mailto:dmarc@contoso.example"
platform.example.                     300 IN TXT   "v=spf1 include:spf.relay.example -all"
_dmarc.platform.example.              300 IN TXT   "v=DMARC1; p=reject"
nested.example.                       300 IN TXT   "v=spf1 include:_spf.nested.example ~all"
_spf.nested.example.                  300 IN TXT   "v=spf1 ip4:192.0.2.0/24 include:spf.protection.outlook.com -all"
selector1._domainkey.nested.example.  300 IN CNAME selector1-nested-example._domainkey.nested.onmicrosoft.com.
selector2._domainkey.nested.example.  300 IN CNAME selector2-nested-example._domainkey.nested.onmicrosoft.com.
_dmarc.nested.example.                300 IN TXT   "v=DMARC1; p=reject"
"""
BROKEN_ZONE = """
broken.example.                       300 IN TXT   "v=spf1 include:_spf.mailgun.example ~all"
broken.example.                       300 IN A     192.0.2.10
selector1._domainkey.broken.example.  300 IN CNAME k1._domainkey.mailgun.example.
_dmarc.broken.example.                300 IN TXT   "v=DMARC1; p=none; rua=mailto:d@broken.example"
twospf.example.                       300 IN TXT   "v=spf1 include:spf.protection.outlook.com -all"
twospf.example.                       300 IN TXT   "v=spf1 mx -all"
selector1._domainkey.twospf.example.  300 IN CNAME selector1-twospf-example._domainkey.twospf.onmicrosoft.com.
_dmarc.twospf.example.                300 IN TXT   "v=DMARC1; rua=mailto:d@twospf.example"
bare.example.                         300 IN A     192.0.2.11
"""
SERVFAIL_DOMAIN, DROP_DOMAIN = "servfail.example", "slow.example"


class _FaultyZoneResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, zone_text: str, servfail: str, drop: str) -> None:
        self.records = [(rr.rname, QTYPE[rr.rtype], rr) for rr in RR.fromZone(zone_text)]
        self.servfail, self.drop = DNSLabel(servfail), DNSLabel(drop)
        self.queries: list[str] = []  # every name asked, in order


    def resolve(self, request: Any, handler: Any) -> Any:
        qname, qtype = request.q.qname, QTYPE[request.q.qtype]
        self.queries.append(str(qname).rstrip("."))
        if qname.matchSuffix(self.drop):
            raise DNSError(f"dropped {qname} (injected timeout)")  # dnslib then sends nothing
        reply = request.reply()
        if qname.matchSuffix(self.servfail):
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        known = [(rtype, rr) for name, rtype, rr in self.records if name == qname]
        for rtype, rr in known:
            if qtype in (rtype, "ANY") or rtype == "CNAME":
                reply.add_answer(rr)
        if not known:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


class DnsServer:
    """The zone served on 127.0.0.1, UDP and TCP, on one free port; `address` is `host:port`."""

    def __init__(self, zone_text: str, *, servfail: str = SERVFAIL_DOMAIN, drop: str = DROP_DOMAIN) -> None:
        self.resolver = _FaultyZoneResolver(zone_text, servfail, drop)
        self._servers: list[DNSServer] = []
        self.port = 0

    def asked(self, suffix: str) -> int:
        """How many queries so far were for `suffix` or a name under it."""
        return sum(1 for q in self.resolver.queries if q == suffix or q.endswith("." + suffix))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> DnsServer:
        quiet = DNSLogger(log="-request,-reply,-truncated,-error", logf=lambda _line: None)
        for _ in range(20):  # the UDP port's TCP twin may be taken: pick another pair then
            udp = DNSServer(self.resolver, address="127.0.0.1", port=0, logger=quiet)
            port = udp.server.server_address[1]
            try:
                tcp = DNSServer(self.resolver, address="127.0.0.1", port=port, tcp=True, logger=quiet)
            except OSError:
                udp.server.server_close()
                continue
            self._servers, self.port = [udp, tcp], port
            for server in self._servers:
                server.start_thread()
            return self
        raise OSError("no free port pair for the DNS server")

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
            server.server.server_close()

