"""Look for secrets in bytes: plain, hex, URL-encoded, and base64 at any alignment inside a longer blob.

Base64 of a secret embedded in a larger encoded blob (a Celery message body, a cookie) depends on
where the secret starts modulo 3 bytes, so each of the three alignments is searched, trimmed to the
characters that come from the secret's bytes alone.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

import redis


@dataclass(frozen=True)
class Hit:
    """One secret found in one source."""

    source: str
    secret: str
    form: str
    context: str  # the surroundings, with the secret itself masked


def _b64_alignments(raw: bytes) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for offset in range(3):
        for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            encoded = encode(b"\0" * offset + raw)
            start = -(-offset * 8 // 6)  # first character made only of the secret's bits
            end = (offset + len(raw)) * 8 // 6  # last character made only of the secret's bits
            out[f"{name}@{offset}"] = encoded[start:end]
    return out


def forms(secret: str) -> dict[str, bytes]:
    """The encodings of `secret` a leak could take."""
    raw = secret.encode()
    found = {"plain": raw, "hex": raw.hex().encode(), "url": quote(secret, safe="").encode(),
             "url_plus": quote_plus(secret).encode(), "json": json.dumps(secret)[1:-1].encode()}
    found.update(_b64_alignments(raw))
    return found


def scan(sources: Mapping[str, bytes], secrets: Mapping[str, str]) -> list[Hit]:
    """Every (source, secret, form) that occurs; `secrets` maps a label to the value."""
    hits = []
    for source, data in sources.items():
        for label, value in secrets.items():
            for form, needle in forms(value).items():
                at = data.find(needle)
                if needle and at >= 0:
                    context = data[max(0, at - 60):at + len(needle) + 60].replace(needle, b"<" + form.encode() + b">")
                    hits.append(Hit(source, label, form, context.decode(errors="replace")))
    return hits


def redis_dump(client: redis.Redis) -> bytes:
    """Every key and its value, whatever the type (strings, hashes, lists, sets, sorted sets, streams)."""
    parts: list[bytes] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        parts.append(key)
        parts += _values(client, key, kind)
    return b"\n".join(parts)


def _values(client: redis.Redis, key: bytes, kind: str) -> Iterable[bytes]:
    if kind == "string":
        return [client.get(key) or b""]
    if kind == "hash":
        return [x for kv in client.hgetall(key).items() for x in kv]
    if kind == "list":
        return list(client.lrange(key, 0, -1))
    if kind == "set":
        return list(client.smembers(key))
    if kind == "zset":
        return [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
    if kind == "stream":
        return [x for _, fields in client.xrange(key) for kv in fields.items() for x in kv]
    return [client.dump(key) or b""]


def celery_messages(raw_messages: Iterable[bytes]) -> bytes:
    """Broker messages as stored, each followed by its decoded body (kombu base64-encodes bodies)."""
    parts = []
    for raw in raw_messages:
        parts.append(raw)
        envelope = json.loads(raw)
        body = envelope.get("body", "")
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            parts.append(base64.b64decode(body))
        else:
            parts.append(str(body).encode())
    return b"\n".join(parts)
