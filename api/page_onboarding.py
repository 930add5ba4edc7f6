"""The page's onboarding sections: the setup guide (commands in `<pre class='command'>`, which the page's
script gives Copy buttons) and the sender-domain checks. Plain HTML: both read the same without JavaScript."""

from __future__ import annotations

from html import escape
from typing import Any

from shared.clouds import CLOUDS

_STATUS = {"pass": ("ok", "PASS"), "warn": ("warn", "WARN"), "fail": ("error", "FAIL")}


def guide_html(guide: dict[str, Any], *, opened: bool = False) -> str:
    """The setup guide as a collapsible section, with a form to generate it for other values."""
    steps = "".join(
        f"<section class='step' id='step-{escape(s['id'])}'><h3>{escape(s['title'])}</h3>"
        + "".join(f"<p>{escape(line)}</p>" for line in s["text"])
        + "".join(f"<pre class='command'>{escape(c)}</pre>" for c in s["commands"]) + "</section>"
        for s in guide["steps"])
    clouds = "".join(f"<option value='{c}'{' selected' if c == guide['cloud'] else ''}>{c}</option>" for c in CLOUDS)
    client_id = guide["client_id"] if not guide["client_id"].startswith("<") else ""
    senders = " ".join(b for b in guide["senders"] if not b.startswith("<"))
    form = ("<form method='get' action='/ui/email-provider/setup' id='guide-form'>"
            "<label>App (client) ID for the guide <input type='text' name='client_id' "
            f"value='{escape(client_id)}'></label><label>Sender mailbox(es) for the guide, separated by spaces "
            f"<input type='text' name='sender' value='{escape(senders)}'></label><label>Cloud for the guide "
            f"<select name='cloud'>{clouds}</select></label>"
            "<button>Generate the guide</button></form>")
    return (f"<details id='setup-guide'{' open' if opened else ''}><summary>Setup guide: send through your own "
            f"Microsoft 365</summary><p>For app <code>{escape(guide['client_id'])}</code>, sender(s) "
            f"<code>{escape(', '.join(guide['senders']))}</code>, cloud {escape(guide['cloud'])} "
            f"({escape(guide['portal'])}, {escape(guide['graph_host'])}).</p>{form}{steps}</details>")


def domain_html(report: dict[str, Any] | None) -> str:
    """The SPF, DKIM and DMARC results of the sender's domain, each with its fix."""
    if not report:
        return ""
    rows = "".join(
        f"<tr class='{_STATUS[r['status']][0]}' id='domain-{escape(r['check'])}'><td>{escape(r['check'].upper())}</td>"
        f"<td>{_STATUS[r['status']][1]}</td><td>{escape(r['message'])}</td><td>{escape(r['fix'] or '')}</td>"
        f"<td><code>{escape(r['found'] or '')}</code></td></tr>" for r in report["results"])
    return (f"<h2>Sender domain {escape(report['domain'])}</h2><table id='domain-checks'><tr><th>Check</th>"
            f"<th>Result</th><th>What we found</th><th>Fix</th><th>Record</th></tr>{rows}</table>"
            f"<p class='hint'>Checked {escape(report['checked_at'][:19].replace('T', ' '))} UTC; results are kept "
            "for a few minutes. DNS changes are never required to save.</p>")
