"""Identifiers: time-ordered, 32 hex characters, unguessable."""

from __future__ import annotations

import os
import time


def new_id(now_ms: int | None = None) -> str:
    """48 bits of milliseconds then 80 random bits, as hex: sorts by creation time."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return f"{ms:012x}{os.urandom(10).hex()}"
