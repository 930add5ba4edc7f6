"""What the app's own token may read about the app: its roles, its credentials' expiry dates, and its
enterprise application's object id.

When an admin saves a client secret without its expiry, the expiry can still be known: if the app
was granted `Application.Read.All` (the token's `roles` claim says so), Graph's
`GET /applications(appId='…')?$select=passwordCredentials,keyCredentials` lists each secret's
`hint` (its first 3 characters) and `endDateTime`. `GET /servicePrincipals(appId='…')?$select=id` gives the
enterprise application's object id for the setup guide (Microsoft documents that an app may read its own
service principal without any permission; Application.Read.All certainly suffices). Reading is best effort:
any failure means "unknown", never a failed save.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import jwt
import structlog

READ_APPS_ROLE = "Application.Read.All"
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_log = structlog.get_logger("tenantmail.transport")


@dataclass(frozen=True, slots=True)
class SecretDates:
    """One client secret of the app as Graph lists it (never its value)."""

    hint: str
    expires_at: datetime | None


def token_roles(access_token: str) -> list[str]:
    """The application permissions in a token's `roles` claim (read, not verified: Graph verifies)."""
    try:
        claims = jwt.decode(access_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return []
    roles = claims.get("roles")
    return [str(r) for r in roles] if isinstance(roles, list) else []


async def secret_dates(session: aiohttp.ClientSession, graph_base: str, access_token: str,
                       client_id: str) -> list[SecretDates] | None:
    """The app's client secrets with their expiry, or None when Graph would not say."""
    body = await _read(session, f"{graph_base}/applications(appId='{client_id}')",
                       "passwordCredentials,keyCredentials", access_token, client_id)
    if body is None:
        return None
    return [SecretDates(str(c.get("hint") or ""), _parse(c.get("endDateTime")))
            for c in body.get("passwordCredentials") or () if isinstance(c, dict)]


async def enterprise_app_id(session: aiohttp.ClientSession, graph_base: str, access_token: str,
                            client_id: str) -> str | None:
    """The object id of the app's enterprise application (service principal) in its tenant, which Exchange's
    `New-ServicePrincipal -ObjectId` needs; None when Graph would not say."""
    body = await _read(session, f"{graph_base}/servicePrincipals(appId='{client_id}')", "id", access_token,
                       client_id)
    found = body.get("id") if body is not None else None
    return found if isinstance(found, str) and _GUID.fullmatch(found) else None


async def _read(session: aiohttp.ClientSession, url: str, select: str, access_token: str,
                client_id: str) -> dict[str, Any] | None:
    try:
        async with session.get(url, params={"$select": select},
                               headers={"Authorization": f"Bearer {access_token}"}) as response:
            if response.status != 200:
                _log.info("graph.app_read_refused", status=response.status, client_id=client_id, select=select)
                return None
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        _log.info("graph.app_read_failed", error_type=type(exc).__name__, client_id=client_id, select=select)
        return None
    return body if isinstance(body, dict) else None


def expiry_of(secret: str, listed: list[SecretDates], now: datetime) -> datetime | None:
    """The expiry of the listed secret that `secret` is: one whose hint it starts with and that has not
    expired (it just got a token), when exactly one expiry fits; two such secrets sharing a hint and
    differing in expiry leave it unknown."""
    dates = {s.expires_at for s in listed
             if s.hint and secret.startswith(s.hint) and (s.expires_at is None or s.expires_at > now)}
    return dates.pop() if len(dates) == 1 else None


def _parse(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
