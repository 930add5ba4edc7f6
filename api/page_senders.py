"""The admin page's named senders: their table, their lines in the edit form, the Send test choice.

The form is plain HTML (no script needed), so the senders travel as one textarea, a line per sender:
`name | address | display name | reply-to | daily recipient limit`, the last three optional. The
`default` sender is the form's Sender fields; a `default` line gives only its daily limit. The lines
become the JSON API's `senders` object here and are validated by the same code (api.provider_input).
"""

from __future__ import annotations

from html import escape
from typing import Any

from shared.errors import ValidationFailed
from shared.senders import DEFAULT_SENDER

SENDERS_FIELD = "senders"
_COLUMNS = ("address", "display_name", "reply_to", "daily_recipient_limit")


def form_text(current: dict[str, Any]) -> str:
    """The textarea's lines for the senders in force (a `default` line only when it has a limit)."""
    lines = []
    for name, sender in (current.get("senders") or {}).items():
        if name == DEFAULT_SENDER:
            if sender.get("daily_recipient_limit"):
                lines.append(f"{DEFAULT_SENDER} | | | | {sender['daily_recipient_limit']}")
            continue
        cells = [str(sender.get(c) or "") for c in _COLUMNS]
        lines.append(" | ".join([name, *cells]).rstrip(" |"))
    return "\n".join(lines)


def senders_from_form(text: str) -> dict[str, dict[str, str]]:
    """The textarea's lines as the API's `senders` object; a line that cannot be read names its number."""
    out: dict[str, dict[str, str]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 1 + len(_COLUMNS):
            raise ValidationFailed(SENDERS_FIELD, f"line {number}: at most {1 + len(_COLUMNS)} cells separated by |")
        name, values = cells[0], dict(zip(_COLUMNS, cells[1:], strict=False))
        if name in out:
            raise ValidationFailed(SENDERS_FIELD, f"line {number}: sender {name!r} is given twice")
        if name == DEFAULT_SENDER:  # its address, name and reply-to are the Sender fields above
            values = {"daily_recipient_limit": values.get("daily_recipient_limit", "")}
        out[name] = {k: v for k, v in values.items() if v}
    return out


def form_html(text: str) -> str:
    """The edit form's senders textarea."""
    return ("<label>Named senders (optional), one per line: <code>name | address | display name | reply-to | "
            "daily recipient limit</code>; <code>default | | | | 5000</code> sets the limit of the sender above "
            f"<textarea name='{SENDERS_FIELD}' id='senders-field'>{escape(text)}</textarea></label>")


def table_html(current: dict[str, Any]) -> str:
    """The senders in force as a table, with what each used of its daily recipients when the document
    carries `usage` (api.sender_usage); empty for the platform default."""
    senders = current.get("senders") or {}
    if not senders:
        return ""
    usage = (current.get("usage") or {}).get("senders") or {}
    rows = "".join(
        f"<tr id='sender-{escape(name)}'><td>{escape(name)}</td><td>{escape(s.get('address') or '')}</td>"
        f"<td>{escape(s.get('display_name') or '')}</td><td>{escape(s.get('reply_to') or '')}</td>"
        f"<td>{escape(str(s.get('daily_recipient_limit') or 'default'))}</td>{_usage_cells(usage.get(name))}</tr>"
        for name, s in senders.items())
    return ("<table id='senders'><tr><th>Sender</th><th>Address</th><th>Display name</th><th>Reply-to</th>"
            "<th>Daily recipient limit</th><th>Recipients, last 24 h</th><th>Remaining</th><th>Next free</th>"
            f"</tr>{rows}</table>{_external_html(current.get('usage') or {})}")


def _usage_cells(used: dict[str, Any] | None) -> str:
    if not used:
        return "<td></td><td></td><td></td>"
    free = "now" if used["remaining"] > 0 else escape(str(used["next_free_at"]))
    return (f"<td class='used'>{used['recipients']} of {used['limit']}</td><td class='remaining'>{used['remaining']}"
            f"</td><td class='next-free'>{free}</td>")


def _external_html(usage: dict[str, Any]) -> str:
    external = usage.get("external")
    if not external:
        return ""
    return (f"<p id='external-usage'>External recipients, last 24 h: {external['recipients']} of "
            f"{external['limit']} ({external['remaining']} remaining).</p>")


def test_choice_html(current: dict[str, Any] | None, chosen: str = DEFAULT_SENDER) -> str:
    """The Send test form's choice of sender (nothing when there is only one)."""
    names = list((current or {}).get("senders") or {})
    if len(names) < 2:
        return ""
    options = "".join(f"<option value='{escape(n)}'{' selected' if n == chosen else ''}>{escape(n)}</option>"
                      for n in names)
    return f"<label>From sender <select name='sender'>{options}</select></label>"
