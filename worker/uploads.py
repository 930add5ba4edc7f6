"""A message with uploaded attachments (3 MiB or more each): draft, upload sessions, chunks, send.

Graph takes attachments over its 4 MB request limit only into a draft (Mail.ReadWrite): create the
draft, open an upload session per attachment, PUT its bytes in chunks to the session's URL, then send
the draft (transport.graph_upload). The draft carries PidTagDeleteAfterSubmit, so Exchange deletes it
once sent instead of keeping a copy in Sent Items.

Exactly once, with the same evidence as sendMail (worker.sendmarks):

- Nothing before the draft's `/send` can deliver anything, so the upload runs on the lane's slot without
  the send mark: the draft and each chunk first renew the slot and check that the mailbox is not blocked
  and the row not fenced off (`MailboxThrottle.renew`). A worker that dies while uploading leaves no mark,
  and the sweeper puts the row back as never started.
- The draft's id is recorded on the row (`record_draft`, only while this claim holds it) as soon as Graph
  answers. Whoever sends the row next deletes that draft first and starts again; every failure before the
  send deletes its own draft too, and a send that Graph accepted forgets it (Exchange deleted it).
- `/send` is the point of no return: right before it `begin_send` sets the send mark (pacing, fence and
  block checks included), exactly where sendMail's request would leave. A 202 is `sent`; a timeout or a
  reset is ambiguous and the ambiguous policy decides, as for sendMail.

A failed chunk (5xx, a dropped connection, a 416 for a range received already) is resumed from the
session's nextExpectedRanges at most
`upload_chunk_retries` times per attachment; past that, or on a 429 or a refusal, the attempt ends with
the error (before the send, a transient one: nothing was delivered) and its draft is deleted.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from sqlalchemy import Engine

from shared.attachments import load_upload
from shared.codes import Code
from shared.errors import (
    AmbiguousOutcome,
    DatabaseUnavailable,
    DeliveryError,
    PermanentError,
    Throttled,
    TransientError,
)
from shared.message import Attachment, graph_request_body, message_from_stored, uploaded_attachments
from shared.metrics import metrics
from shared.providers import ResolvedProvider
from shared.settings import Settings
from transport.graph import GraphClient, GraphResponse
from transport.graph_upload import Answer, GraphUploads
from worker.retry_policy import Attempted, attempt_label, classify
from worker.store import AttemptRecord, ClaimedRow, forget_draft, record_draft
from worker.throttle import MailboxThrottle, Slot

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class UploadResult:
    """How a large send ended: Graph's answer (`error` None: sent), or `slot` when the lane may not go on
    (blocked, fenced off, lease lost) before anything was sent; `record` is the one attempt row."""

    error: DeliveryError | None = None
    record: AttemptRecord | None = None
    slot: Slot | None = None
    requests: int = 0
    uploaded_bytes: int = 0


class LargeSend:
    """One row through draft → upload sessions → send, on a slot its lane holds (one per row)."""

    def __init__(self, graph: GraphClient, engine: Engine, throttle: MailboxThrottle, settings: Settings, *,
                 claim: str, lane_id: str, progress: list[str]) -> None:
        self._graph, self._engine, self._throttle, self._settings = graph, engine, throttle, settings
        self._claim, self._lane_id, self._progress = claim, lane_id, progress
        self._requests = self._bytes = 0
        self._last: GraphResponse | None = None

    async def send(self, row: ClaimedRow, provider: ResolvedProvider, token: str) -> UploadResult:
        """Deliver the row's message; never leaves a draft behind that it could delete."""
        started = datetime.now(UTC)
        t0 = time.perf_counter()
        api = GraphUploads(self._graph, provider.cloud.graph_base, provider.sender_address)
        if row.draft_id:  # an earlier attempt's: deleted before anything else, or the attempt goes no further
            old = GraphUploads(self._graph, provider.cloud.graph_base, row.draft_mailbox or provider.sender_address)
            if (error := await self._discard(old, token, row.id, row.draft_id)) is not None:
                return self._result(started, t0, error, provider)
        outcome = await self._draft_and_upload(row, provider, token, api)
        if isinstance(outcome, Slot | DeliveryError):
            if isinstance(outcome, Slot):
                return UploadResult(slot=outcome, requests=self._requests, uploaded_bytes=self._bytes)
            return self._result(started, t0, outcome, provider)
        sent = await self._send_draft(row, provider, token, api, outcome)
        if isinstance(sent, Slot):
            return UploadResult(slot=sent, requests=self._requests, uploaded_bytes=self._bytes)
        return self._result(started, t0, sent, provider)

    async def _draft_and_upload(self, row: ClaimedRow, provider: ResolvedProvider, token: str,
                                api: GraphUploads) -> str | Slot | DeliveryError:
        """The draft's id once every attachment is in it; else why not (its draft deleted)."""
        if not (slot := await self._renew(row, provider)).granted:
            return slot
        message = message_from_stored(row.payload)
        body = graph_request_body(message, sender_address=provider.sender_address, sender_name=provider.sender_name,
                                  reply_to=provider.reply_to, notification_id=row.id, checked=True, draft=True)
        answer = await self._ask(lambda crid: api.create_draft(token, body, crid))
        if isinstance(answer, DeliveryError):
            return answer
        if answer.value is None:
            return TransientError("Graph created the draft without an id", status=answer.response.status,
                                  code=Code.INTERNAL_ERROR, request_id=answer.response.request_id)
        draft_id = answer.value
        try:
            recorded = await asyncio.to_thread(record_draft, self._engine, row.id, self._claim,
                                               provider.sender_address, draft_id)
        except DatabaseUnavailable as exc:
            await self._discard(api, token, row.id, draft_id)
            return exc
        if not recorded:
            await self._discard(api, token, row.id, draft_id)
            return Slot(granted=False, fenced=True)  # the sweeper took the row back meanwhile
        for position, attachment in uploaded_attachments(message):
            content, _ = await asyncio.to_thread(load_upload, self._engine, row.id, position)
            failed = await self._upload(row, provider, token, api, draft_id, attachment, content)
            if failed is not None:
                await self._discard(api, token, row.id, draft_id)
                return failed
        return draft_id

    async def _upload(self, row: ClaimedRow, provider: ResolvedProvider, token: str, api: GraphUploads,
                      draft_id: str, attachment: Attachment, content: bytes) -> Slot | DeliveryError | None:
        item: dict[str, object] = {"attachmentType": "file", "name": attachment.name, "size": len(content),
                                   "contentType": attachment.content_type, "isInline": attachment.is_inline}
        if attachment.content_id is not None:
            item["contentId"] = attachment.content_id
        session = await self._ask(lambda crid: api.create_session(token, draft_id, item, crid))
        if isinstance(session, DeliveryError):
            return session
        if (url := session.value) is None:
            return TransientError("Graph opened an upload session without an uploadUrl", code=Code.INTERNAL_ERROR,
                                  status=session.response.status, request_id=session.response.request_id)
        start = retries = 0
        while start < len(content):
            if not (slot := await self._renew(row, provider)).granted:
                return slot
            chunk = content[start:start + self._settings.upload_chunk_bytes]
            put = await self._ask(functools.partial(api.put_chunk, url, chunk, start, len(content)))
            if not isinstance(put, DeliveryError):
                self._bytes += len(chunk)
                metrics.upload_bytes.inc(len(chunk))
                if put.response.status != 200:  # 201: the attachment is complete
                    return None
                if put.next_start is None:
                    return TransientError("the upload session named no next range", code=Code.INTERNAL_ERROR,
                                          status=200, request_id=put.response.request_id)
                start = put.next_start
                continue
            # 416: the range was received already (a chunk whose answer was lost, resent by aiohttp itself on
            # a reused connection): the session's next expected range says where to go on.
            refused = isinstance(put, Throttled | PermanentError) and put.status != 416
            if refused or retries >= self._settings.upload_chunk_retries:
                return put
            retries += 1
            await asyncio.sleep(self._settings.backoff_base_ms * retries / 1000)  # a beat, not a Retry-After
            status = await self._ask(lambda crid: api.upload_status(url, crid))
            if isinstance(status, DeliveryError) or status.next_start is None:
                return put
            log.info("upload.resumed", notification_id=row.id, at_byte=status.next_start, retry=retries)
            start = status.next_start
        return TransientError("the upload session did not complete the attachment", code=Code.INTERNAL_ERROR)

    async def _send_draft(self, row: ClaimedRow, provider: ResolvedProvider, token: str, api: GraphUploads,
                          draft_id: str) -> DeliveryError | Slot | None:
        """The point of no return: the send mark, then POST …/send."""
        slot = await self._throttle.begin_send(provider.mailbox_key, self._lane_id, row.id, claim=self._claim)
        if not slot.granted:  # fenced, blocked or paced at the last step: nothing is sent, the draft goes
            await self._discard(api, token, row.id, draft_id)
            return slot
        self._progress.append("posting")
        crid = str(uuid.uuid4())
        self._requests += 1
        try:
            response = await api.send_draft(token, draft_id, crid)
        except DeliveryError as exc:
            return exc  # may have been sent: the draft stays recorded, the next attempt deletes what is left
        self._last = response
        error = classify(response)
        if error is None:
            await self._forget(row.id, draft_id)  # Exchange deleted it
        elif not isinstance(error, AmbiguousOutcome):
            await self._discard(api, token, row.id, draft_id)
        return error

    async def _ask(self, call: Callable[[str], Awaitable[Answer]]) -> Answer | DeliveryError:
        """One request before the send: its answer, or the error it means (a transient one at worst)."""
        crid = str(uuid.uuid4())
        self._requests += 1
        try:
            answer = await call(crid)
        except DeliveryError as exc:
            return _before_send(exc)
        self._last = answer.response
        error = classify(answer.response)
        return answer if error is None else _before_send(error)

    async def _renew(self, row: ClaimedRow, provider: ResolvedProvider) -> Slot:
        return await self._throttle.renew(provider.mailbox_key, self._lane_id, row.id, claim=self._claim)

    async def _discard(self, api: GraphUploads, token: str, notification_id: str,
                       draft_id: str) -> DeliveryError | None:
        """Delete a draft (gone already counts as deleted) and forget it; the error when it stays."""
        self._requests += 1
        try:
            response = await api.delete_draft(token, draft_id, str(uuid.uuid4()))
        except DeliveryError as exc:
            log.warning("upload.draft_not_deleted", notification_id=notification_id, code=exc.code)
            return _before_send(exc)
        if response.status not in (200, 204, 404):
            log.warning("upload.draft_not_deleted", notification_id=notification_id, status=response.status)
            return _before_send(classify(response) or TransientError("draft not deleted", status=response.status))
        await self._forget(notification_id, draft_id)
        return None

    async def _forget(self, notification_id: str, draft_id: str) -> None:
        # Best effort: a draft id left recorded only makes the next attempt (if any) ask Graph to delete it.
        try:
            await asyncio.to_thread(forget_draft, self._engine, notification_id, draft_id)
        except DatabaseUnavailable:
            log.warning("upload.draft_not_forgotten", notification_id=notification_id)

    def _result(self, started: datetime, t0: float, error: DeliveryError | None,
                provider: ResolvedProvider) -> UploadResult:
        resp = self._last
        record = AttemptRecord(
            started_at=started, outcome=attempt_label(Attempted(error)), latency_ms=(time.perf_counter() - t0) * 1000,
            http_status=error.status if error is not None else (resp.status if resp else None),
            error_code=error.code if error else None, error_message=error.message if error else None,
            request_id=(error.request_id if error else None) or (resp.request_id if resp else None),
            client_request_id=(error.client_request_id if error else None)
            or (resp.client_request_id if resp else None),
            retry_after_s=error.retry_after_s if error else None, mailbox=provider.sender_address)
        log.info("upload.attempt", outcome=record.outcome, requests=self._requests, uploaded_bytes=self._bytes)
        return UploadResult(error, record, requests=self._requests, uploaded_bytes=self._bytes)


def _before_send(error: DeliveryError) -> DeliveryError:
    """Before the draft's send nothing can have been delivered: a timeout or a 504 there is transient."""
    if not isinstance(error, AmbiguousOutcome):
        return error
    return TransientError(error.message, status=error.status, code=error.code, request_id=error.request_id,
                          client_request_id=error.client_request_id, retry_after_s=error.retry_after_s)

