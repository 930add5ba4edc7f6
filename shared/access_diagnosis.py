"""Which permission problem a Graph refusal is, when Graph's answer alone cannot say.

Graph answers both "outside an RBAC for Applications scope" and "no Mail.Send" with the same 403
ErrorAccessDenied "Access is denied" (reference: exchange-rbac-and-limits.md §1). What tells them apart
is what we know besides: an Access Policy refusal carries "[RAOP]"; a token whose `roles` hold
Mail.Send is consented tenant-wide (so the denial is not RBAC's); a token without it can only send
through an RBAC grant, which, if the configuration changed within Exchange's cache time, may still be
propagating.

`access_code` makes that call once, for Send test (`api.test_send`) and for the worker's recorded
outcome (`worker.delivery`) alike, from what is known without another Graph request: the token's
`roles`, when the configuration in force was saved, and the refusal's message.
"""

from __future__ import annotations

from shared.codes import Code
from shared.diagnosis import Diagnosis, diagnose

PROPAGATION_S = 2 * 3600  # Exchange caches RBAC for Applications grants up to 2 hours for an active app


def access_code(code: str | None, message: str | None, *, token_roles: list[str] | None,
                config_age_s: float | None = None) -> Code | None:
    """Which refusal a sendMail 403 ErrorAccessDenied is, as one of our codes; None when it is another
    answer, or when nothing known tells more than Graph's code (Mail.Send in the token, roles unknown).

    "[RAOP]" in the message is an Application Access Policy, whatever the roles. Otherwise a token
    without Mail.Send can only have been refused by Exchange RBAC for Applications: still propagating
    if the configuration was saved within Exchange's cache time, else outside the scope (or no
    assignment at all)."""
    if code != "ErrorAccessDenied":
        return None
    if message and ("RAOP" in message or "AccessPolicy" in message):
        return Code.ACCESS_POLICY_DENIED
    if token_roles is None or "Mail.Send" in token_roles:
        return None
    recent = config_age_s is not None and config_age_s < PROPAGATION_S
    return Code.RBAC_PROPAGATING if recent else Code.RBAC_SCOPE_DENIED


def access_diagnosis(code: str | None, message: str | None, *, token_roles: list[str] | None,
                     config_age_s: float | None = None) -> Diagnosis | None:
    """The diagnosis of a sendMail refusal given the token's roles and how long ago the configuration
    in force was saved; falls back to `diagnose`."""
    precise = access_code(code, message, token_roles=token_roles, config_age_s=config_age_s)
    return diagnose(precise) if precise is not None else diagnose(code, message)


def consent_notice(token_roles: list[str]) -> Diagnosis | None:
    """A warning when Mail.Send is consented tenant-wide (an RBAC scope then restricts nothing)."""
    return diagnose(Code.MAIL_SEND_TENANT_WIDE) if "Mail.Send" in token_roles else None
