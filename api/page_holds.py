"""The page's banner while notifications are on hold (`shared.holds`): for each hold, whose notifications
wait (one sender, or every sender of the tenant), what Microsoft answered, the fix, and that saving a
corrected email provider sends them."""

from __future__ import annotations

from html import escape
from typing import Any

from api.context import ApiContext
from api.page_layout import when
from shared.diagnosis import diagnose
from shared.holds import describe_sender, held_summary


async def holds_banner(ctx: ApiContext, tenant_id: str) -> str:
    """The banner, or "" when nothing is held."""
    holds = await ctx.blocking(held_summary, ctx.engine, tenant_id)
    if not holds:
        return ""
    items = "".join(_item(h) for h in holds)
    return ("<div class='error' id='holds' role='alert'><strong>Notifications are on hold.</strong>"
            f"<ul>{items}</ul>Nothing is lost: they go out in order as soon as a corrected email provider is "
            "saved (Edit, then Save).</div>")


def _item(hold: dict[str, Any]) -> str:
    sender = hold["sender"]
    if sender:
        whose = (f"from the sender {escape(describe_sender(sender, hold['sender_name']))} (the other senders keep "
                 "sending)")
    else:
        whose = "of every sender"
    found = diagnose(hold["code"], None)
    fix = f" Fix: {escape(found.fix)}" if found else ""
    return (f"<li class='hold' data-sender='{escape(sender or '')}'>{hold['held']} notification(s) {whose}: Microsoft "
            f"answered {escape(hold['code'] or '')}.{fix} They fail if still held at {when(hold['expires_at'])}.</li>")
