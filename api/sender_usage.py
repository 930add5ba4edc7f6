"""GET /v1/email-provider/usage: how much of Exchange's sending limits each sender has used.

Read from the fleet-wide Redis counters the workers keep (transport.quota_windows). When Redis lost
them, or cannot be reached, the figures come from the database instead (shared.quota_usage), the
same record the workers rebuild the counters from; `source` says which.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from api.context import ApiContext
from shared import quota_usage
from shared.errors import RedisUnavailable
from shared.models import ProviderConfig
from shared.providers import current_config
from shared.senders import senders_of
from transport.quota_windows import REQUESTS, Usage, Window, read_usage, sender_windows, usage_of


async def usage(ctx: ApiContext, tenant_id: str) -> dict[str, Any]:
    """Per sender: recipients in the window, its limit, remaining, when the next one is free; requests in
    the 10-minute window; and the tenant's external budget when set. Empty on the platform default."""
    row = await ctx.blocking(current_config, ctx.engine, tenant_id)
    if row is None or row.kind != "graph" or not row.client_id:
        return {"senders": {}, "external": None}
    now_ms = int(time.time() * 1000)
    domains = {s.address.rsplit("@", 1)[-1].lower() for s in senders_of(row).values()}
    senders: dict[str, Any] = {}
    external: dict[str, Any] | None = None
    for name, sender in senders_of(row).items():
        windows = sender_windows(tenant_id=tenant_id, client_id=row.client_id, address=sender.address,
                                 daily_recipient_limit=sender.daily_recipient_limit,
                                 daily_external_recipient_limit=row.daily_external_recipient_limit,
                                 settings=ctx.settings)
        recipients = await _read(ctx, row, windows[0], sender.address, now_ms, domains)
        requests = await _read(ctx, row, windows[1], sender.address, now_ms, domains)
        senders[name] = {"address": sender.address, **_figures(recipients[0], windows[0], now_ms),
                         "requests": {"used": requests[0].used, "limit": windows[1].limit,
                                      "window_s": windows[1].window_ms / 1000},
                         "source": recipients[1]}
        if len(windows) > 2 and external is None:
            used, source = await _read(ctx, row, windows[2], None, now_ms, domains)
            external = {**_figures(used, windows[2], now_ms), "source": source}
    return {"senders": senders, "external": external}


def _figures(used: Usage, window: Window, now_ms: int) -> dict[str, Any]:
    remaining = max(0, window.limit - used.used)
    free_ms = now_ms if remaining > 0 or used.oldest_release_ms is None else used.oldest_release_ms
    return {"recipients": used.used, "limit": window.limit, "remaining": remaining,
            "window_s": window.window_ms / 1000,
            "next_free_at": datetime.fromtimestamp(free_ms / 1000, UTC).isoformat()}


async def _read(ctx: ApiContext, row: ProviderConfig, window: Window, mailbox: str | None, now_ms: int,
                domains: set[str]) -> tuple[Usage, str]:
    try:
        found = await read_usage(ctx.redis, window, now_ms)
        if found.seeded:
            return found, "redis"
    except RedisUnavailable:
        pass
    span = quota_usage.Span(row.tenant_id, mailbox, window.window_ms / 1000, now_ms, window.bucket_of)
    if mailbox is None:
        counts = await ctx.blocking(quota_usage.tenant_external, ctx.engine, span, domains)
    elif window.key.startswith(REQUESTS):
        counts = await ctx.blocking(quota_usage.mailbox_requests, ctx.engine, span)
    else:
        counts = await ctx.blocking(quota_usage.mailbox_recipients, ctx.engine, span)
    return usage_of({str(b): str(n) for b, n in counts.items()}, window, now_ms), "database"
