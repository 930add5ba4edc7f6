"""Onboarding helpers of the provider settings: the tenant's setup guide and its sender-domain checks.

The guide takes the configuration in force (app id, sender, cloud) unless the caller names others
(`?client_id=&sender=&cloud=`, for an admin preparing a new app before saving it). Domain checks go
through the server's resolver and a cache (`TENANTMAIL_DOMAIN_CHECK_CACHE_S`); they never fail a request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from multidict import MultiMapping

from api.context import ApiContext
from shared.clouds import CLOUDS
from shared.errors import ValidationFailed
from shared.message import check_address
from shared.providers import current_config
from shared.senders import senders_of
from shared.setup_guide import setup_guide
from transport.domain_checks import check_domain

GUIDE_QUERY = ("client_id", "sender", "cloud")
MAX_SENDERS = 10
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


async def guide(ctx: ApiContext, tenant_id: str, query: MultiMapping[str]) -> dict[str, Any]:
    """The setup guide for the query's values, else the configuration in force, else placeholders."""
    client_id, senders, cloud = parse_guide_query(query)
    row = await ctx.blocking(current_config, ctx.engine, tenant_id)
    if row is not None and row.kind == "graph":
        client_id = client_id or row.client_id
        senders = senders or [s.address for s in senders_of(row).values()]  # every named sender in the scope
        cloud = cloud or row.cloud
    return setup_guide(client_id, senders, cloud or "global")


def parse_guide_query(query: MultiMapping[str]) -> tuple[str | None, list[str], str | None]:
    """`client_id` (a GUID), `sender` (repeatable, up to 10 addresses), `cloud`; 422 naming the bad one."""
    client_id = query.get("client_id")
    if client_id is not None and not _GUID.fullmatch(client_id):
        raise ValidationFailed("client_id", "must be the Application (client) ID, a GUID")
    senders = query.getall("sender", [])
    if len(senders) > MAX_SENDERS:
        raise ValidationFailed("sender", f"at most {MAX_SENDERS} sender addresses")
    checked = [check_address(s, f"sender[{i}]") for i, s in enumerate(senders)]
    cloud = query.get("cloud")
    if cloud is not None and cloud not in CLOUDS:
        raise ValidationFailed("cloud", f"must be one of {', '.join(sorted(CLOUDS))}")
    return (client_id.lower() if client_id else None), checked, cloud


async def domain_report(ctx: ApiContext, current: Mapping[str, Any]) -> dict[str, Any] | None:
    """SPF, DKIM and DMARC of the sender's domain for the provider document `current`, cached."""
    sender = str(current.get("sender_address") or "")
    if "@" not in sender:
        return None
    via_graph = current.get("service") == "microsoft_graph"
    cloud, include = str(current.get("cloud") or "global"), ctx.settings.platform_spf_include
    key = (sender.rsplit("@", 1)[1].lower(), "graph" if via_graph else "relay", cloud, include or "")
    cached = ctx.domain_cache.get(key)
    if cached is not None:
        return cached
    report = await ctx.blocking(lambda: check_domain(ctx.dns, sender, via_graph=via_graph, cloud=cloud,
                                                     relay_include=include))
    ctx.domain_cache.put(key, report)
    return report
