"""Graph's large-attachment path: draft, upload session, chunks, send, and the draft's removal.

    POST   /users/{id}/messages                                     → 201 {"id"}   the draft (Mail.ReadWrite)
    POST   /users/{id}/messages/{draft}/attachments/createUploadSession
           {"AttachmentItem": {"attachmentType": "file", "name", "size", "contentType", "isInline"}}
                                                                    → 201 {"uploadUrl", "nextExpectedRanges"}
    PUT    {uploadUrl}   Content-Range: bytes a-b/N, no Authorization (the URL carries its own token)
                                                                    → 200 {"nextExpectedRanges"} … 201 at the end
    GET    {uploadUrl}                                              → 200 {"nextExpectedRanges"} (resume)
    POST   /users/{id}/messages/{draft}/send                        → 202 (the point of no return)
    DELETE /users/{id}/messages/{draft}                             → 204

(Microsoft Graph documentation: "Attach large files to Outlook messages or events", and the
`attachment: createUploadSession` and `message: send` API pages.) Each call answers a `GraphResponse`;
network failures leave as `TransientError` / `AmbiguousOutcome` from `transport.graph`, and the caller
(worker.uploads) knows that only the send can have delivered anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import orjson

from transport.graph import GraphClient, GraphResponse, mailbox_url


@dataclass(frozen=True, slots=True)
class Answer:
    """A Graph response and the one value the caller wants from its body (None when absent)."""

    response: GraphResponse
    value: str | None = None
    next_start: int | None = None  # where the upload goes on, from nextExpectedRanges


class GraphUploads:
    """The large-attachment calls for one mailbox, over the process's `GraphClient`."""

    def __init__(self, graph: GraphClient, graph_base: str, mailbox: str) -> None:
        self._graph = graph
        self._base = mailbox_url(graph_base, mailbox)

    async def create_draft(self, token: str, body: bytes, client_request_id: str) -> Answer:
        """POST the message as a draft; `value` is its id."""
        response, raw = await self._graph.call("POST", f"{self._base}/messages", client_request_id, token=token,
                                               body=body)
        return Answer(response, _field(raw, "id") if response.status == 201 else None)

    async def create_session(self, token: str, draft_id: str, item: dict[str, object],
                             client_request_id: str) -> Answer:
        """An upload session for one attachment of the draft; `value` is its upload URL."""
        url = f"{self._message(draft_id)}/attachments/createUploadSession"
        response, raw = await self._graph.call("POST", url, client_request_id, token=token,
                                               body=orjson.dumps({"AttachmentItem": item}))
        return Answer(response, _field(raw, "uploadUrl") if response.status == 201 else None)

    async def put_chunk(self, upload_url: str, chunk: bytes, start: int, total: int,
                        client_request_id: str) -> Answer:
        """PUT bytes start..start+len-1 of `total`; `next_start` is the next byte wanted (None when done)."""
        headers = {"Content-Range": f"bytes {start}-{start + len(chunk) - 1}/{total}"}
        response, raw = await self._graph.call("PUT", upload_url, client_request_id, body=chunk,
                                               content_type="application/octet-stream", headers=headers)
        return Answer(response, next_start=_next_start(raw) if response.status == 200 else None)

    async def upload_status(self, upload_url: str, client_request_id: str) -> Answer:
        """Where an interrupted upload goes on: `next_start` (None when the session is gone or complete)."""
        response, raw = await self._graph.call("GET", upload_url, client_request_id)
        return Answer(response, next_start=_next_start(raw) if response.status == 200 else None)

    async def send_draft(self, token: str, draft_id: str, client_request_id: str) -> GraphResponse:
        """POST …/send: from here on the message may be delivered."""
        response, _ = await self._graph.call("POST", f"{self._message(draft_id)}/send", client_request_id,
                                             token=token)
        return response

    async def delete_draft(self, token: str, draft_id: str, client_request_id: str) -> GraphResponse:
        """DELETE the draft (204; 404 when it is gone already)."""
        response, _ = await self._graph.call("DELETE", self._message(draft_id), client_request_id, token=token)
        return response

    def _message(self, draft_id: str) -> str:
        return f"{self._base}/messages/{quote(draft_id, safe='')}"


def _field(raw: bytes, name: str) -> str | None:
    try:
        value = orjson.loads(raw).get(name)
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def _next_start(raw: bytes) -> int | None:
    """The first byte of the first range in nextExpectedRanges ("2097152-" or "2097152-4194303")."""
    try:
        ranges = orjson.loads(raw).get("nextExpectedRanges") or []
        return int(str(ranges[0]).split("-", 1)[0]) if ranges else None
    except (orjson.JSONDecodeError, AttributeError, ValueError, IndexError):
        return None
