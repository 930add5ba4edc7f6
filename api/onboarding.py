"""Onboarding helpers of the provider settings: the tenant's setup guide and its sender-domain checks.

The guide takes the configuration in force (app id, sender, cloud) unless the caller names others
(`?client_id=&sender=&cloud=`, for an admin preparing a new app before saving it). For the app in force it
also names the enterprise application's object id when a save or restore could read it from Graph (kept
in Redis, `tm:eapp:…`, for `ENTERPRISE_APP_TTL_S`); otherwise the guide says how to look it up.

Domain checks go through the server's resolver and are cached for `TENANTMAIL_DOMAIN_CHECK_CACHE_S`: in
Redis (`tm:dns:…`), so every API process shares one lookup per domain, and in the process, so a Redis
outage neither fails a request nor sends every page view to DNS. They never fail a request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from multidict import MultiMapping

from api.context import ApiContext
from api.credentials import Credentials
from api.redis_cache import keep_json, read_json
from shared.clouds import CLOUDS
from shared.errors import ValidationFailed
from shared.message import check_address
from shared.providers import current_config
from shared.senders import senders_of
from shared.setup_guide import setup_guide
from transport.domain_checks import check_domain
from transport.graph_apps import enterprise_app_id

GUIDE_QUERY = ("client_id", "sender", "cloud")
MAX_SENDERS = 10
ENTERPRISE_APP_TTL_S = 30 * 86400  # an app's service principal id changes only if it is deleted and re-consented
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


async def guide(ctx: ApiContext, tenant_id: str, query: MultiMapping[str]) -> dict[str, Any]:
    """The setup guide for the query's values, else the configuration in force, else placeholders."""
    client_id, senders, cloud = parse_guide_query(query)
    row = await ctx.blocking(current_config, ctx.engine, tenant_id)
    enterprise_app: str | None = None
    if row is not None and row.kind == "graph":
        client_id = client_id or row.client_id
        senders = senders or [s.address for s in senders_of(row).values()]  # every named sender in the scope
        cloud = cloud or row.cloud
        if client_id is not None and client_id == row.client_id:
            found = await read_json(ctx.redis, _enterprise_app_key(tenant_id, str(row.azure_tenant), client_id))
            enterprise_app = found if isinstance(found, str) else None
    return setup_guide(client_id, senders, cloud or "global", enterprise_app_id=enterprise_app)


async def remember_enterprise_app(ctx: ApiContext, tenant_id: str, creds: Credentials, token: str) -> None:
    """After a save or restore checked `creds`: read the app's enterprise application object id from Graph
    with its token and keep it for the guide. Best effort: Graph refusing (no Application.Read.All) or Redis
    not answering leaves the guide telling the admin how to look it up."""
    if ctx.http is None:
        return
    found = await enterprise_app_id(ctx.http, creds.cloud.graph_base, token, creds.client_id)
    if found is not None:
        await keep_json(ctx.redis, _enterprise_app_key(tenant_id, creds.azure_tenant, creds.client_id), found,
                        ttl_s=ENTERPRISE_APP_TTL_S)


def _enterprise_app_key(tenant_id: str, azure_tenant: str, client_id: str) -> str:
    return f"tm:eapp:{tenant_id}:{azure_tenant.lower()}:{client_id.lower()}"


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
    shared_key = "tm:dns:" + ":".join(key)
    shared = await read_json(ctx.redis, shared_key)
    report: dict[str, Any] = shared if isinstance(shared, dict) else {}
    if not report:
        report = await ctx.blocking(lambda: check_domain(ctx.dns, sender, via_graph=via_graph, cloud=cloud,
                                                         relay_include=include))
        await keep_json(ctx.redis, shared_key, report, ttl_s=ctx.settings.domain_check_cache_s)
    ctx.domain_cache.put(key, report)
    return report
