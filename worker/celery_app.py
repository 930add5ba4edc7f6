"""The Celery application, built from settings at process start (never at import time).

Tasks carry batches of notification ids, never payloads or secrets. Messages are acknowledged
when a task starts: the database, not the broker, is what guarantees delivery (see
worker.dispatcher), so broker redeliveries are neither needed nor wanted. The broker is Redis by
default (a single server or a Sentinel group: shared.redis_client); a BROKER_URL of amqp:// selects
RabbitMQ with a quorum queue (Redis stays the token cache and throttle store).
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import threading
import time
from typing import Any

import structlog
from celery import Celery, signals
from celery.beat import PersistentScheduler
from kombu.entity import Queue

from shared.db import make_engine
from shared.errors import ConfigurationError
from shared.metrics import metrics
from shared.redis_client import celery_broker, sync_client
from shared.reminders import send_due_reminders
from shared.secretbox import SecretBox
from shared.settings import Settings
from worker.batch import deliver_batch
from worker.dispatcher import Dispatcher
from worker.liveness import Heartbeat, watch_worker
from worker.runtime import Runtime, close_runtime, get_runtime
from worker.sender_gauges import SenderUsageCollector
from worker.store import purge_finished
from worker.supervision import Backoff, report_failure, start_supervised
from worker.webhook_delivery import attach_to_worker

log = structlog.get_logger(__name__)
QUEUE = "tenantmail"
TASK = "tenantmail.deliver_batch"
PURGE_TASK = "tenantmail.purge_finished"
EXPIRY_TASK = "tenantmail.expiry_reminders"


def create_celery(settings: Settings) -> Celery:
    """A configured Celery app with the delivery task registered."""
    broker = settings.effective_broker_url
    if not broker or not settings.redis_url:
        raise ConfigurationError("REDIS_URL (and optionally BROKER_URL) must be set for workers")
    broker, sentinel_options = celery_broker(broker)  # a Sentinel group: kombu wants its name apart
    app = Celery("tenantmail", broker=broker, set_as_current=False)
    if broker.startswith(("amqp://", "amqps://", "pyamqp://")):
        # RabbitMQ: a durable quorum queue (replicated, no visibility timeout), publisher confirms.
        app.conf.task_queues = [Queue(QUEUE, queue_arguments={"x-queue-type": "quorum"}, durable=True)]  # type: ignore[no-untyped-call]
        app.conf.broker_transport_options = {"confirm_publish": True}
    app.conf.update(
        task_serializer="json", accept_content=["json"], task_ignore_result=True, result_backend=None,
        task_acks_late=False, worker_prefetch_multiplier=2, task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False, worker_redirect_stdouts=False, worker_send_task_events=False,
        task_send_sent_event=False, broker_pool_limit=16,
    )
    if not broker.startswith(("amqp://", "amqps://", "pyamqp://")):
        app.conf.broker_transport_options = {"visibility_timeout": 600, **sentinel_options}
    redis_url = settings.redis_url

    @app.task(name=TASK, ignore_result=True)  # type: ignore[untyped-decorator]
    def deliver(ids: list[str]) -> dict[str, int]:
        return deliver_batch(get_runtime(settings, redis_url), ids)

    @app.task(name=PURGE_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
    def purge() -> int:
        older_than_ms = int((time.time() - settings.retention_days * 86400) * 1000)
        purged = purge_finished(get_runtime(settings, redis_url).engine, older_than_ms)
        log.info("retention.purged", notifications=purged, retention_days=settings.retention_days)
        return purged

    @app.task(name=EXPIRY_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
    def expiry_reminders() -> int:
        # Safe to run twice or concurrently: each reminder is a unique row (shared.reminders).
        recorded = send_due_reminders(get_runtime(settings, redis_url).engine, settings)
        log.info("expiry.checked", reminders=recorded)
        return recorded

    app.conf.beat_schedule = {
        "purge-finished": {"task": PURGE_TASK, "schedule": settings.purge_interval_s},
        "expiry-reminders": {"task": EXPIRY_TASK, "schedule": settings.expiry_check_interval_s},
    }

    return app


def publisher(app: Celery) -> Any:
    """A function that publishes one batch of ids."""
    def publish(ids: list[str]) -> None:
        app.send_task(TASK, args=[ids], queue=QUEUE)
    return publish


def start_dispatcher(app: Celery, settings: Settings) -> Dispatcher:
    """Start a (standby) dispatcher on a daemon thread of this process."""
    assert settings.redis_url
    dispatcher = Dispatcher(
        make_engine(settings, pool_size=2), sync_client(settings.redis_url),
        publisher(app), settings,
    )
    start_supervised("dispatcher", dispatcher.run, stop=dispatcher.stop_event,
                     heartbeat=Heartbeat(settings.state_dir, "dispatcher"), backoff=Backoff.from_settings(settings))
    return dispatcher


class HeartbeatScheduler(PersistentScheduler):  # type: ignore[misc]
    """Celery's persistent scheduler, reporting liveness each time it ticks."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One scheduler round. A failing round (the broker is down) is logged, reported and retried after a
        backoff instead of ending beat's loop (see worker.supervision)."""
        try:
            interval_s = float(super().tick(*args, **kwargs))
        except Exception as exc:  # the top boundary of beat's loop: log, report, retry
            self._tm_failures = getattr(self, "_tm_failures", 0) + 1
            report_failure(self._heartbeat(), "beat", exc, self._tm_failures)
            return Backoff(*self.app.conf.tm_backoff_ms).delay_s(self._tm_failures)
        self._tm_failures = 0
        self._heartbeat().beat()
        return interval_s

    def _heartbeat(self) -> Heartbeat:
        if not hasattr(self, "_tm_heartbeat"):
            self._tm_heartbeat = Heartbeat(self.app.conf.tm_state_dir, "beat")
        return self._tm_heartbeat


def run_beat(settings: Settings) -> None:
    """Run Celery beat (exactly one per deployment): schedules the retention purge and expiry reminders."""
    app = create_celery(settings)
    schedule = settings.state_dir / "celerybeat-schedule"
    # Tick at least every liveness interval so that a live beat is seen as one.
    app.conf.update(beat_max_loop_interval=settings.liveness_interval_s, tm_state_dir=settings.state_dir,
                    tm_backoff_ms=(settings.loop_restart_base_ms, settings.loop_restart_cap_ms))
    app.start(["beat", "--loglevel=WARNING", f"--schedule={schedule}",
               f"--scheduler={HeartbeatScheduler.__module__}:{HeartbeatScheduler.__qualname__}"])


def run_worker(settings: Settings, *, concurrency: int, with_dispatcher: bool, hostname: str | None,
               metrics_port: int | None = None) -> None:
    """Run a Celery worker (threads pool) in this process until it is told to stop."""
    app = create_celery(settings)
    SecretBox.from_settings(settings)  # a configuration error stops the worker here, before Celery starts
    holder: dict[str, Dispatcher] = {}
    failed: list[ConfigurationError] = []
    heartbeat = Heartbeat(settings.state_dir, "worker")
    stop_watch = threading.Event()
    attach_to_worker(settings)  # the webhook delivery loop (worker.webhook_delivery)

    @signals.worker_ready.connect(weak=False)  # type: ignore[untyped-decorator]
    def _ready(**_: Any) -> None:
        try:
            runtime = get_runtime(settings, settings.redis_url or "")
            if metrics_port:
                _serve_metrics(metrics_port, runtime)
        except ConfigurationError as exc:
            # Celery would log a traceback and go on serving without a runtime: stop instead, and let
            # the command line print the one-line error once Celery has shut down.
            failed.append(exc)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if with_dispatcher:
            holder["d"] = start_dispatcher(app, settings)
        heartbeat.beat()
        metrics.worker_live.set(1)
        watch = functools.partial(watch_worker, heartbeat, lambda: _loop_answers(runtime), settings.liveness_stall_s,
                                  settings.liveness_interval_s, stop_watch)
        start_supervised("liveness", watch, stop=stop_watch, heartbeat=heartbeat,
                         backoff=Backoff.from_settings(settings))
        log.info("worker.ready", concurrency=concurrency, dispatcher=with_dispatcher)

    @signals.worker_shutting_down.connect(weak=False)  # type: ignore[untyped-decorator]
    def _stopping(**_: Any) -> None:
        if "d" in holder:
            holder["d"].stop_event.set()

    @signals.worker_shutdown.connect(weak=False)  # type: ignore[untyped-decorator]
    def _shutdown(**_: Any) -> None:
        stop_watch.set()
        heartbeat.remove()
        close_runtime()

    argv = ["--quiet", "worker", "--pool=threads", f"--concurrency={concurrency}", "--loglevel=WARNING",
            f"--queues={QUEUE}", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    if hostname:
        argv.append(f"--hostname={hostname}")
    app.worker_main(argv)
    if failed:
        raise failed[0]


def _serve_metrics(port: int, runtime: Runtime) -> None:
    try:
        metrics.serve(port, runtime.engine)
        metrics.registry.register(SenderUsageCollector(runtime.engine, runtime.redis_sync, runtime.settings))
    except OSError as exc:
        raise ConfigurationError(f"cannot serve metrics on port {port} ({exc.strerror}): choose another "
                                 "--metrics-port / TENANTMAIL_METRICS_PORT") from None


def _loop_answers(runtime: Runtime) -> bool:
    """Whether the process's event loop runs a trivial coroutine within 5 s."""
    try:
        runtime.run(asyncio.sleep(0), timeout_s=5)
    except Exception:
        return False
    return True
