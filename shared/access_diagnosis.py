"""Which permission problem a Graph refusal is, when Graph's answer alone cannot say.

Graph answers both "outside an RBAC for Applications scope" and "no Mail.Send" with the same 403
ErrorAccessDenied "Access is denied" (reference: exchange-rbac-and-limits.md §1). What tells them apart
is what we know besides: an Access Policy refusal carries "[RAOP]"; a token whose `roles` hold
Mail.Send is consented tenant-wide (so the denial is not RBAC's); a token without it can only send
through an RBAC grant, which, if the configuration changed within Exchange's cache time, may still be
propagating.
"""

from __future__ import annotations

from shared.codes import Code
from shared.diagnosis import Diagnosis, diagnose

PROPAGATION_S = 2 * 3600  # Exchange caches RBAC for Applications grants up to 2 hours for an active app


def access_diagnosis(code: str | None, message: str | None, *, token_roles: list[str] | None,
                     config_age_s: float | None = None) -> Diagnosis | None:
    """The diagnosis of a sendMail refusal given the token's roles and how long ago the configuration
    in force was saved; falls back to `diagnose`."""
    if code == "ErrorAccessDenied" and token_roles is not None and "Mail.Send" not in token_roles:
        if message and ("RAOP" in message or "AccessPolicy" in message):
            return diagnose(code, message)
        recent = config_age_s is not None and config_age_s < PROPAGATION_S
        return diagnose(Code.RBAC_PROPAGATING if recent else Code.RBAC_SCOPE_DENIED)
    return diagnose(code, message)


def consent_notice(token_roles: list[str]) -> Diagnosis | None:
    """A warning when Mail.Send is consented tenant-wide (an RBAC scope then restricts nothing)."""
    return diagnose(Code.MAIL_SEND_TENANT_WIDE) if "Mail.Send" in token_roles else None
