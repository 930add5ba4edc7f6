"""Sending claimed notifications: token, fleet-wide mailbox slot, Graph, decision; or, for tenants
on the platform default, one SMTP transaction through the relay.

Runs on the process event loop. Nothing here sleeps out a Retry-After: a blocked or saturated
mailbox sends the row back to the database with the time it may be tried again. Nothing here
decides a row's fate either: every outcome comes from `worker.retry_policy.decide`. A Redis
outage ends the lanes it reaches; their rows that never left go back to the database (`Requeued`),
and the outcomes already known are returned with them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime

import structlog
from sqlalchemy import Engine

from shared.access_diagnosis import access_code
from shared.attachments import uploaded_bytes
from shared.codes import Code
from shared.errors import (
    AmbiguousOutcome,
    AuthenticationExpired,
    DeliveryError,
    NoProviderConfigured,
    PermanentError,
    ProviderError,
    RedisUnavailable,
    RequestWithheld,
    Throttled,
    TokenError,
    TransientError,
)
from shared.message import graph_request_body, message_from_stored
from shared.metrics import metrics
from shared.mime import smtp_envelope
from shared.models import State, WaitReason
from shared.providers import PlatformProvider, Provider, ResolvedProvider, unknown_sender
from shared.senders import DEFAULT_SENDER
from shared.settings import Settings
from transport.graph import GraphClient
from transport.graph_apps import token_roles
from transport.send_gate import Gate
from transport.smtp import SmtpRelayClient
from transport.tokens import TokenProvider
from worker import liveness
from worker.breakers import RELAY_SCOPE, Breakers, provider_scopes, reason_of
from worker.retry_policy import (
    Attempted,
    Decision,
    Event,
    Requeued,
    Stage,
    attempt_label,
    classify,
    decide,
    retry_delay_ms,
)
from worker.sendmarks import SendMarks
from worker.store import AttemptRecord, ClaimedRow, RowOutcome
from worker.throttle import MailboxThrottle, Slot
from worker.uploads import LargeSend

log = structlog.get_logger(__name__)
_GO = Slot(granted=True)
_STOP = Slot(granted=False)


class Sender:
    """Delivers claimed rows through their tenants' providers."""

    def __init__(self, graph: GraphClient, tokens: TokenProvider, throttle: MailboxThrottle, marks: SendMarks,
                 settings: Settings, smtp: SmtpRelayClient | None = None, *, claim: str = "",
                 breakers: Breakers | None = None, engine: Engine | None = None) -> None:
        self._breakers = breakers
        self._engine = engine  # large attachments' bytes and drafts (worker.uploads)
        self._claim = claim  # the batch's claimed_by: the sweeper fences rows off from it (worker.sendmarks)
        self._graph = graph
        self._tokens = tokens
        self._throttle = throttle
        self._marks = marks
        self._settings = settings
        self._smtp = smtp

    async def send_all(self, rows: Sequence[ClaimedRow],
                       providers: dict[str, Provider | ProviderError]) -> list[RowOutcome]:
        """Send every row; one outcome per row, in order.

        Rows are grouped by (app, mailbox). Each group is served by up to `mailbox_concurrency`
        lanes; a lane takes one fleet-wide slot and sends the group's rows one after another on
        it, so a send costs one Redis round trip (`begin_send`) instead of an acquire and a release.
        """
        outcomes: dict[str, RowOutcome] = {}
        groups: dict[str, deque[tuple[ClaimedRow, ResolvedProvider]]] = {}
        relayed: list[tuple[ClaimedRow, PlatformProvider]] = []
        for row in rows:
            provider = providers[row.tenant_id]
            if not isinstance(provider, ProviderError):  # the row's named sender (shared.senders)
                named = provider.for_sender(row.payload.get("sender", DEFAULT_SENDER))
                if named is None:
                    outcomes[row.id] = self._attempted(row, provider, unknown_sender(row.payload["sender"]))
                    continue
                provider = named
            if isinstance(provider, ProviderError):
                code = (Code.NO_PROVIDER_CONFIGURED if isinstance(provider, NoProviderConfigured)
                        else Code.PROVIDER_ERROR)
                outcomes[row.id] = self._attempted(row, None, DeliveryError(str(provider), code=code))
            elif isinstance(provider, PlatformProvider) and uploaded_bytes(row.payload):
                error = PermanentError("the platform default takes no attachment of 3 MiB or more",
                                       code=Code.LARGE_ATTACHMENT_UNSUPPORTED)
                outcomes[row.id] = self._attempted(row, provider, error)
            elif isinstance(provider, PlatformProvider):
                relayed.append((row, provider))
            else:
                groups.setdefault(provider.mailbox_key, deque()).append((row, provider))
        await asyncio.gather(*(self._mailbox(key, queue, outcomes) for key, queue in groups.items()),
                             *(self._relay(row, provider, outcomes) for row, provider in relayed))
        return [outcomes[r.id] for r in rows]

    async def _relay(self, row: ClaimedRow, provider: PlatformProvider, outcomes: dict[str, RowOutcome]) -> None:
        """One row through the platform's SMTP relay (the pool bounds how many run at once); never raises."""
        started = datetime.now(UTC)
        progress: list[str] = []
        try:
            if self._breakers and (reason := await self._breakers.gate((RELAY_SCOPE,), row.id)):
                outcomes[row.id] = self._requeue(row, provider, self._settings.slot_requeue_ms, reason)
                return
            outcomes[row.id] = await self._send_smtp(row, provider, started, progress)
        except Exception as exc:  # the top boundary of an SMTP send, as send_one is for Graph
            outcomes[row.id] = self._unexpected(row, provider, exc, left="sending" in progress)

    async def _send_smtp(self, row: ClaimedRow, provider: PlatformProvider, started: datetime,
                         progress: list[str]) -> RowOutcome:
        if self._smtp is None:
            error = DeliveryError("the platform default needs TENANTMAIL_SMTP_HOST", code=Code.NO_PROVIDER_CONFIGURED)
            return self._attempted(row, provider, error, started=started)
        envelope = smtp_envelope(message_from_stored(row.payload), sender_address=provider.sender_address,
                                 sender_name=provider.sender_name, reply_to=provider.reply_to,
                                 notification_id=row.id)
        # The sweeper must count a row of a worker that dies from here on as possibly sent.
        if not await self._marks.mark_started(row.id, claim=self._claim):
            return self._lost(row)
        progress.append("sending")
        t0 = time.perf_counter()
        try:
            result = await self._smtp.send(envelope)
        except DeliveryError as exc:
            await self._observe((RELAY_SCOPE,), exc)
            outcome = attempt_label(Attempted(exc))
            metrics.smtp_sends.labels(outcome, exc.code or "").inc()
            record = AttemptRecord(started_at=started, outcome=outcome, latency_ms=(time.perf_counter() - t0) * 1000,
                                   smtp_status=exc.status, error_code=exc.code, error_message=exc.message,
                                   client_request_id=envelope.message_id, mailbox=provider.sender_address)
            return await self._outage_reason(self._finish(row, provider, Attempted(exc), (record,)), (RELAY_SCOPE,))
        metrics.smtp_sends.labels("sent", f"SMTP{result.code}").inc()
        await self._observe((RELAY_SCOPE,), None)
        self._marks.mark_accepted(row.id)
        refused = "; ".join(f"{r}: {reply}" for r, reply in result.refused.items())
        record = AttemptRecord(started_at=started, outcome="sent", latency_ms=result.latency_ms,
                               smtp_status=result.code, request_id=result.message[:64],
                               client_request_id=result.message_id, mailbox=provider.sender_address,
                               error_message=f"recipients refused: {refused}" if refused else None)
        return self._finish(row, provider, Attempted(None), (record,))

    async def _mailbox(self, key: str, queue: deque[tuple[ClaimedRow, ResolvedProvider]],
                       outcomes: dict[str, RowOutcome]) -> None:
        lanes = min(self._settings.mailbox_concurrency, len(queue))
        await asyncio.gather(*(self._lane(key, queue, outcomes) for _ in range(lanes)))
        while queue:  # no lane got a slot in time: back to the database, due again shortly
            row, provider = queue.popleft()
            blocked_ms = self._throttle.local_block_ms(key)
            outcomes[row.id] = self._requeue(row, provider, blocked_ms or self._settings.slot_requeue_ms,
                                             WaitReason.THROTTLED if blocked_ms else None)

    async def _lane(self, key: str, queue: deque[tuple[ClaimedRow, ResolvedProvider]],
                    outcomes: dict[str, RowOutcome]) -> None:
        gate = self._throttle.local_gate(key)  # other batches of this process may share the mailbox
        wait_ms = self._settings.slot_wait_max_ms
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(gate.acquire(), wait_ms / 1000)
        except TimeoutError:
            return
        lane_id = uuid.uuid4().hex
        try:
            waited_ms = int((time.monotonic() - t0) * 1000)
            try:
                slot = await self._throttle.acquire(key, lane_id, max_wait_ms=max(0, wait_ms - waited_ms))
            except RedisUnavailable:  # the lane ends; its group's rows go back to the database
                log.warning("send.redis_unavailable", mailbox=key, exc_info=True)
                return
            if slot.blocked:
                self._requeue_all(queue, outcomes, slot.wait_ms)
            if not slot.granted:
                return
            try:
                while queue:
                    row, provider = queue.popleft()
                    outcome, slot = await self.send_one(row, provider, lane_id)
                    outcomes[row.id] = outcome
                    if not slot.granted:
                        if slot.blocked:
                            self._requeue_all(queue, outcomes, slot.wait_ms)
                        break
            finally:
                await self._release(key, lane_id)
        finally:
            gate.release()

    def _requeue_all(self, queue: deque[tuple[ClaimedRow, ResolvedProvider]],
                     outcomes: dict[str, RowOutcome], delay_ms: int) -> None:
        # Only a Retry-After block empties the whole queue.
        while queue:
            row, provider = queue.popleft()
            outcomes[row.id] = self._requeue(row, provider, delay_ms, WaitReason.THROTTLED)

    async def send_one(self, row: ClaimedRow, provider: ResolvedProvider, lane_id: str) -> tuple[RowOutcome, Slot]:
        """Deliver one row on a held slot; never raises. The Slot says whether the lane may go on.

        This is the top boundary of a send: a bug below it is logged and recorded against the
        row (as ambiguous once a Graph request may have left, else as a retry), never left to
        strand the whole batch in `sending`.
        """
        progress: list[str] = []
        try:
            return await self._send_one(row, provider, lane_id, progress)
        except Exception as exc:
            return self._unexpected(row, provider, exc, left="posting" in progress), _STOP

    async def _send_one(self, row: ClaimedRow, provider: ResolvedProvider, lane_id: str,
                        progress: list[str]) -> tuple[RowOutcome, Slot]:
        started = datetime.now(UTC)
        gated, reason = await self._gate(row, provider)
        if reason is not None:  # an open breaker: back to the database, no attempt spent
            return self._requeue(row, provider, self._settings.slot_requeue_ms, reason), _GO
        entra = provider_scopes(provider).entra
        try:
            token = await self._tokens.get(provider)
        except RedisUnavailable:
            raise  # nothing asked of Entra ID: the row goes back without spending an attempt
        except (TokenError, TransientError) as exc:
            await self._observe((entra,) if entra else (), exc)
            attempted = self._attempted(row, provider, exc, started=started, stage=Stage.TOKEN)
            return await self._outage_reason(attempted, (entra,) if entra else ()), _GO
        if entra in gated:  # this row probed Entra ID and got a token
            await self._observe((entra,), None)
        if uploaded_bytes(row.payload) and self._engine is not None:  # draft, upload sessions, send
            return await self._send_large(row, provider, token, lane_id, progress)
        slot = await self._throttle.begin_send(provider.mailbox_key, lane_id, row.id, claim=self._claim)
        if not slot.granted or slot.fenced or self._throttle.local_block_ms(provider.mailbox_key):
            return self._refused(row, provider, slot)
        progress.append("posting")
        # The block is checked once more when the request has its connection (transport.send_gate).
        gate = self._throttle.send_gate(provider.mailbox_key, admitted_at=time.monotonic())
        outcome = await self._send_in_slot(row, provider, token, gate)
        return await self._sent(row, provider, outcome)

    def _refused(self, row: ClaimedRow, provider: ResolvedProvider, slot: Slot) -> tuple[RowOutcome, Slot]:
        """The row may not be sent on this slot now: lost to the sweeper, or back to the database."""
        if slot.fenced:
            return self._lost(row), _GO
        if slot.granted and (blocked_ms := self._throttle.local_block_ms(provider.mailbox_key)):
            # a 429 reached this process while Redis answered
            slot = Slot(granted=False, wait_ms=blocked_ms, blocked=True)
        delay_ms = slot.wait_ms or self._settings.slot_requeue_ms
        return self._requeue(row, provider, delay_ms, WaitReason.THROTTLED if slot.blocked else None), slot

    async def _send_large(self, row: ClaimedRow, provider: ResolvedProvider, token: str, lane_id: str,
                          progress: list[str]) -> tuple[RowOutcome, Slot]:
        assert self._engine is not None
        large = LargeSend(self._graph, self._engine, self._throttle, self._settings, claim=self._claim,
                          lane_id=lane_id, progress=progress)
        result = await large.send(row, provider, token)
        if result.slot is not None:
            return self._refused(row, provider, result.slot)
        assert result.record is not None
        await self._observe(provider_scopes(provider).send, result.error)
        metrics.sends.labels(result.record.outcome, result.record.error_code or "").inc()
        if isinstance(result.error, AuthenticationExpired):  # the next attempt asks for a new token
            await self._tokens.invalidate(provider, token)
        return await self._sent(row, provider, await self._concluded(row, provider, result.error, [result.record]))

    async def _sent(self, row: ClaimedRow, provider: ResolvedProvider, outcome: RowOutcome) -> tuple[RowOutcome, Slot]:
        outcome = await self._outage_reason(outcome, provider_scopes(provider).send)
        if outcome.state is State.SENT:
            self._marks.mark_accepted(row.id)
        if blocked_ms := self._throttle.local_block_ms(provider.mailbox_key):
            return outcome, Slot(granted=False, wait_ms=blocked_ms, blocked=True)  # a 429: the lane stops, rows wait
        return outcome, _GO

    async def _send_in_slot(self, row: ClaimedRow, provider: ResolvedProvider, token: str, gate: Gate) -> RowOutcome:
        body = graph_request_body(
            message_from_stored(row.payload), sender_address=provider.sender_address,
            sender_name=provider.sender_name, reply_to=provider.reply_to, notification_id=row.id, checked=True,
        )
        records: list[AttemptRecord] = []
        for resend in (False, True):
            try:
                error = await self._post(provider, token, body, records, gate)
            except RequestWithheld as withheld:  # the mailbox got blocked before the request was written
                metrics.throttle_withheld.inc()
                return self._finish(row, provider, Requeued(withheld.wait_ms, WaitReason.THROTTLED), tuple(records))
            if not isinstance(error, AuthenticationExpired) or resend:
                break
            try:
                await self._tokens.invalidate(provider, token)
                token = await self._tokens.get(provider)
            except (TokenError, TransientError) as exc:
                records.append(_record(datetime.now(UTC), Attempted(exc, Stage.TOKEN)))
                error = exc
                break
        return await self._concluded(row, provider, error, records)

    async def _concluded(self, row: ClaimedRow, provider: ResolvedProvider, error: DeliveryError | None,
                         records: list[AttemptRecord]) -> RowOutcome:
        """The row's outcome after its Graph calls; a 429 blocks the mailbox here and fleet-wide first."""
        if isinstance(error, Throttled):
            delay_ms = retry_delay_ms(error, row.attempts + len(records), self._settings)
            self._throttle.block_locally(provider.mailbox_key, delay_ms)
            metrics.throttle_blocks.inc()
            try:
                await self._throttle.block(provider.mailbox_key, delay_ms)
            except Exception:  # this process is blocked already; the row is rescheduled either way
                log.warning("throttle.block_failed", mailbox=provider.mailbox_key, exc_info=True)
        return self._finish(row, provider, Attempted(error), tuple(records))

    async def _post(self, provider: ResolvedProvider, token: str, body: bytes,
                    records: list[AttemptRecord], gate: Gate) -> DeliveryError | None:
        client_request_id = str(uuid.uuid4())
        started = datetime.now(UTC)  # replaced by the moment the gate let it go (resp.sent_at) when it did
        t0 = time.perf_counter()
        try:
            resp = await self._graph.send_mail(provider.cloud.graph_base, token, provider.sender_address,
                                               body, client_request_id, gate=gate)
        except DeliveryError as exc:
            metrics.sends.labels("transport_error", exc.code or "").inc()
            records.append(_record(started, Attempted(exc), latency_ms=(time.perf_counter() - t0) * 1000,
                                   mailbox=provider.sender_address))
            await self._observe(provider_scopes(provider).send, exc)
            return exc
        error = classify(resp)
        if isinstance(error, Throttled):  # at once: the other lanes of this process pass their gates meanwhile
            self._throttle.block_locally(provider.mailbox_key, retry_delay_ms(error, 1, self._settings))
        await self._observe(provider_scopes(provider).send, error)
        code, message = resp.code, resp.message
        if (precise := _precise_access_error(error, token, provider)) is not None:
            error, code, message = precise, precise.code, precise.message
        outcome = attempt_label(Attempted(error))
        metrics.sends.labels(outcome, resp.code or "").inc()
        metrics.graph_latency.observe(resp.latency_ms / 1000)
        records.append(AttemptRecord(
            started_at=resp.sent_at or started, outcome=outcome,
            latency_ms=resp.latency_ms, http_status=resp.status, error_code=code,
            error_message=message, request_id=resp.request_id,
            client_request_id=resp.client_request_id, retry_after_s=resp.retry_after_s,
            mailbox=provider.sender_address,
        ))
        return error

    async def _gate(self, row: ClaimedRow, provider: ResolvedProvider) -> tuple[list[str], WaitReason | None]:
        """The open scopes this row goes through (Entra ID only when no token is cached), and the reason
        it must wait unless it is their probe."""
        if self._breakers is None:
            return [], None
        scopes = provider_scopes(provider)
        gated = list(scopes.send)
        if scopes.entra and await self._breakers.is_open(scopes.entra) and not await self._tokens.has_token(provider):
            gated.insert(0, scopes.entra)
        return gated, await self._breakers.gate(gated, row.id)

    async def _outage_reason(self, outcome: RowOutcome, scopes: Sequence[str]) -> RowOutcome:
        """A row retried while its scope is open (it may have opened it) shows the outage as its reason."""
        if self._breakers is None or outcome.state is not State.RETRY_WAIT or outcome.wait_reason is not None:
            return outcome
        for scope in scopes:
            if await self._breakers.is_open(scope):
                return dataclasses.replace(outcome, wait_reason=reason_of(scope))
        return outcome

    async def _observe(self, scopes: Sequence[str], error: DeliveryError | None) -> None:
        if self._breakers is not None:
            await self._breakers.observe(scopes, error)

    async def _release(self, mailbox_key: str, lease_id: str) -> None:
        # The outcome is already known: a failed release must not turn it into an error. The
        # slot's lease frees it on its own.
        try:
            await self._throttle.release(mailbox_key, lease_id)
        except Exception:
            log.warning("throttle.release_failed", mailbox=mailbox_key, exc_info=True)

    @staticmethod
    def _lost(row: ClaimedRow) -> RowOutcome:
        """The sweeper took the row back while it waited here (this worker looked dead): it is not
        sent, and nothing is written for it (`write_outcomes` skips rows left `sending`)."""
        log.warning("send.claim_lost", notification_id=row.id, tenant_id=row.tenant_id)
        return RowOutcome(row, State.SENDING, 0, (), row.possible_duplicate, row.ambiguous_count)

    def _unexpected(self, row: ClaimedRow, provider: Provider, exc: Exception, *, left: bool) -> RowOutcome:
        """The top boundary of a send: Redis down before the request left sends the row back
        untouched; a bug is logged and recorded against the row (ambiguous once the request may
        have left, else a retry), never left to strand the whole batch in `sending`."""
        if isinstance(exc, RedisUnavailable) and not left:
            log.warning("send.redis_unavailable", notification_id=row.id, tenant_id=row.tenant_id, exc_info=True)
            return self._finish(row, provider, Requeued(self._settings.slot_requeue_ms), ())
        log.exception("send.unexpected_error", notification_id=row.id, tenant_id=row.tenant_id)
        cls = AmbiguousOutcome if left else TransientError
        return self._attempted(row, provider, cls(f"internal error: {type(exc).__name__}", code=Code.INTERNAL_ERROR))

    def _attempted(self, row: ClaimedRow, provider: Provider | None, error: DeliveryError, *,
                   started: datetime | None = None, stage: Stage = Stage.SEND) -> RowOutcome:
        """The outcome of an attempt that ended in `error` without a response to record."""
        event = Attempted(error, stage)
        return self._finish(row, provider, event, (_record(started or datetime.now(UTC), event),))

    def _finish(self, row: ClaimedRow, provider: Provider | None, event: Event,
                records: tuple[AttemptRecord, ...]) -> RowOutcome:
        now = time.time()
        d = decide(event, attempts=row.attempts + len(records), ambiguous_count=row.ambiguous_count,
                   age_s=now - row.age_start.timestamp(), now_ms=int(now * 1000), settings=self._settings)
        if d.code is not None and d.label is not None:  # the policy says why itself (MaxAgeExceeded)
            records += (AttemptRecord(started_at=datetime.now(UTC), outcome=d.label, error_code=d.code,
                                      error_message=d.message),)
        if d.label is not None:  # an attempt is recorded (a requeue is not one)
            error = event.error if isinstance(event, Attempted) else DeliveryError(d.message or "", code=d.code)
            self._count(row, d, error, row.attempts + len(records))
        return RowOutcome(row, d.state, d.next_attempt_ms, records,
                          row.possible_duplicate or d.possible_duplicate, d.ambiguous_count,
                          provider.version if provider else None, provider.sender_address if provider else None,
                          d.wait_reason)

    @staticmethod
    def _count(row: ClaimedRow, d: Decision, error: DeliveryError | None, attempt: int) -> None:
        metrics.notifications.labels(d.state.value).inc()
        liveness.progress.outcome()
        if d.state is State.RETRY_WAIT:
            metrics.retries.inc()
        if d.label == "ambiguous":
            metrics.ambiguous.inc()
        if error is not None:
            log.log(logging.INFO if d.state is State.RETRY_WAIT else logging.WARNING, "notification.attempt",
                    notification_id=row.id, tenant_id=row.tenant_id, attempt=attempt,
                    state=d.state.value, code=error.code, status=error.status, request_id=error.request_id,
                    client_request_id=error.client_request_id)

    def _requeue(self, row: ClaimedRow, provider: Provider, delay_ms: int,
                 reason: WaitReason | None = None) -> RowOutcome:
        return self._finish(row, provider, Requeued(delay_ms, reason), ())


def _precise_access_error(error: DeliveryError | None, token: str,
                          provider: ResolvedProvider) -> PermanentError | None:
    """A 403 ErrorAccessDenied under the code Send test would diagnose it with (an Access Policy, an RBAC
    scope, a propagating RBAC change: `shared.access_diagnosis`), from the token's roles and the version's
    save time, without another Graph request; None when there is nothing more precise to say. Graph's code
    stays in the message; the outcome (held) is the same."""
    if error is None or error.code != "ErrorAccessDenied":
        return None
    age_s = (datetime.now(UTC) - provider.saved_at).total_seconds() if provider.saved_at else None
    code = access_code(error.code, error.message, token_roles=token_roles(token), config_age_s=age_s)
    if code is None:
        return None
    return PermanentError(f"{error.code}: {error.message}", status=error.status, code=code,
                          request_id=error.request_id, client_request_id=error.client_request_id)


def _record(started: datetime, event: Attempted, *, latency_ms: float | None = None,
            mailbox: str | None = None) -> AttemptRecord:
    error = event.error
    assert error is not None  # an accepted send is recorded from its response
    return AttemptRecord(started_at=started, outcome=attempt_label(event), latency_ms=latency_ms,
                         http_status=error.status, error_code=error.code, error_message=error.message,
                         request_id=error.request_id, client_request_id=error.client_request_id,
                         retry_after_s=error.retry_after_s, mailbox=mailbox)
