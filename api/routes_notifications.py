"""Producer routes for services that are not Python: POST /v1/notifications and its batch form."""

from __future__ import annotations

from aiohttp import web

from api import ratelimit
from api.context import ApiContext, context, principal
from api.errors import ApiError
from api.routes_provider import read_json, read_object
from shared.errors import ValidationFailed
from shared.producer import EnqueueItem

routes = web.RouteTableDef()
MAX_BATCH = 500
_BATCH_FIELDS = frozenset({"items"})


def _item(tenant_id: str, body: object, prefix: str) -> EnqueueItem:
    if not isinstance(body, dict):
        raise ValidationFailed(prefix or "body", "must be a JSON object")
    message = {k: v for k, v in body.items() if k != "idempotency_key"}
    return EnqueueItem(tenant_id, message, body.get("idempotency_key"))


def _field(exc: ValidationFailed, prefix: str) -> str:
    # The producer names fields "[0].message.to[0].address"; the API's body *is* the message.
    field = exc.field.split("]", 1)[1].lstrip(".") if exc.field.startswith("[") else exc.field
    field = field.removeprefix("message.").removeprefix("message")
    return f"{prefix}{field}" if field else (prefix.rstrip(".") or "body")


async def _enqueue(ctx: ApiContext, tenant_id: str, items: list[EnqueueItem]) -> list[str]:
    """Count the notifications against the tenant's limit (429 over it), then validate and store them all;
    invalid ones give their count back."""
    limit = ctx.settings.api_notifications_per_minute
    # Fails open: a producer's notification must reach the outbox whatever happens to Redis.
    await ratelimit.hit(ctx.redis, "notification", tenant_id, limit=limit, cost=len(items),
                        fail_open=ctx.ratelimit_fail_open)
    try:
        return await ctx.blocking(ctx.producer.enqueue_many, items)
    except ValidationFailed:
        await ratelimit.refund(ctx.redis, "notification", tenant_id, cost=len(items))
        raise


@routes.post("/v1/notifications")
async def post_notification(request: web.Request) -> web.Response:
    """Enqueue one notification (sender or admin); 201 with its id (the existing id for a repeated key)."""
    who = principal(request, "send")
    body = await read_json(request, max_bytes=context(request).settings.api_max_notification_bytes)
    item = _item(who.tenant_id, body, "")
    try:
        nid = await _enqueue(context(request), who.tenant_id, [item])
    except ValidationFailed as exc:
        raise ApiError(422, "validation_failed", f"{_field(exc, '')}: {exc.reason}", field=_field(exc, "")) from None
    return web.json_response({"id": nid[0]}, status=201)


@routes.post("/v1/notifications:batch")
async def post_batch(request: web.Request) -> web.Response:
    """Enqueue up to 500 notifications at once, all or none; 201 with their ids in order."""
    who = principal(request, "send")
    items = (await read_object(request, _BATCH_FIELDS)).get("items")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        raise ValidationFailed("items", f"must be a list of 1-{MAX_BATCH} notifications")
    batch = [_item(who.tenant_id, b, f"items[{i}].") for i, b in enumerate(items)]
    try:
        ids = await _enqueue(context(request), who.tenant_id, batch)
    except ValidationFailed as exc:
        index = exc.field[1:].split("]", 1)[0] if exc.field.startswith("[") else "0"
        field = _field(exc, f"items[{index}].")
        raise ApiError(422, "validation_failed", f"{field}: {exc.reason}", field=field) from None
    return web.json_response({"ids": ids}, status=201)
