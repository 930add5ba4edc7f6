"""UTC time in one place. SQLite hands back naive datetimes (stored as UTC) and PostgreSQL aware ones;
`as_utc` makes them comparable, and user input without an offset is read as UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def as_utc(value: datetime) -> datetime:
    """The same instant as an aware UTC datetime; a naive value is taken to be UTC already."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
