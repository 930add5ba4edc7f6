"""API errors: what the JSON error body says, `{"error": {"code", "message", "field", ...}}`."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answer: HTTP status, a stable code, a message, optionally the offending field."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The JSON body of this error."""
        return {"error": {"code": self.code, "message": self.message, "field": self.field, **self.extra}}


def not_found(what: str) -> ApiError:
    """404 for anything the caller's tenant does not have (whether or not another tenant does)."""
    return ApiError(404, "not_found", f"{what} not found")
