"""shared.producer.Producer against SQLite and PostgreSQL (the `database_url` fixture runs both)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from shared.db import make_engine
from shared.errors import ValidationFailed
from shared.models import Notification, State
from shared.producer import EnqueueItem, Producer
from shared.settings import Settings

_N = Notification.__table__  # type: ignore[attr-defined]
SPACING_MS = 50


def _msg(i: int = 0, **extra: Any) -> dict[str, Any]:
    return {"to": [f"user{i}@example.org"], "subject": f"Review {i}", "body": "Please review.", **extra}


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(Settings(database_url=database_url))
    yield engine
    engine.dispose()


@pytest.fixture
def make_producer(engine: Engine) -> Callable[..., Producer]:
    def factory(**overrides: Any) -> Producer:
        return Producer(engine, Settings(fair_spacing_ms=SPACING_MS, **overrides))
    return factory


@pytest.fixture
def producer(make_producer: Callable[..., Producer]) -> Producer:
    return make_producer()


def _rows(engine: Engine, **where: Any) -> list[Any]:
    query = select(_N).order_by(_N.c.fair_rank, _N.c.id)
    for column, value in where.items():
        query = query.where(_N.c[column] == value)
    with engine.connect() as conn:
        return list(conn.execute(query).all())


def _count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(_N)).scalar_one())


def test_producer_enqueue_returns_id_of_stored_queued_row(producer: Producer, engine: Engine) -> None:
    nid = producer.enqueue("acme", _msg(1, headers=[{"name": "X-Campaign", "value": "q4"}]))

    [row] = _rows(engine)
    assert row.id == nid and len(nid) == 32
    assert (row.tenant_id, row.state, row.attempts, row.ambiguous_count) == ("acme", State.QUEUED.value, 0, 0)
    assert row.possible_duplicate is False and row.dispatch_lease_until_ms is None and row.send_lease_until_ms is None
    assert row.payload["to"] == [{"address": "user1@example.org"}]
    assert row.payload["headers"] == [{"name": "X-Campaign", "value": "q4"}]


def test_producer_enqueue_many_returns_ids_in_input_order(producer: Producer, engine: Engine) -> None:
    ids = producer.enqueue_many([EnqueueItem("acme", _msg(i)) for i in range(3)] + [("beta", _msg(3), "k3")])

    assert len(set(ids)) == 4
    stored = {r.id: (r.tenant_id, r.payload["subject"], r.idempotency_key) for r in _rows(engine)}
    assert [stored[i] for i in ids] == [("acme", "Review 0", None), ("acme", "Review 1", None),
                                        ("acme", "Review 2", None), ("beta", "Review 3", "k3")]


def test_producer_enqueue_many_empty_stores_nothing(producer: Producer, engine: Engine) -> None:
    assert producer.enqueue_many([]) == []
    assert _count(engine) == 0


def test_producer_enqueue_many_is_all_or_nothing(producer: Producer, engine: Engine) -> None:
    items = [EnqueueItem("acme", _msg(i)) for i in range(5)]
    items[3] = EnqueueItem("acme", {"to": [{"address": "not an address"}], "subject": "x"})

    with pytest.raises(ValidationFailed) as info:
        producer.enqueue_many(items)

    assert info.value.field == "[3].message.to[0].address"
    assert _count(engine) == 0


@pytest.mark.parametrize("tenant_id", ["", " acme", "acme corp", "-acme", "a" * 65, "acme/x", None, 42])
def test_producer_rejects_bad_tenant_id(producer: Producer, engine: Engine, tenant_id: Any) -> None:
    with pytest.raises(ValidationFailed) as info:
        producer.enqueue_many([EnqueueItem("ok", _msg()), EnqueueItem(tenant_id, _msg())])

    assert info.value.field == "[1].tenant_id"
    assert _count(engine) == 0


@pytest.mark.parametrize("tenant_id", ["a", "acme", "Acme-2.eu_west:prod", "a" * 64])
def test_producer_accepts_good_tenant_id(producer: Producer, engine: Engine, tenant_id: str) -> None:
    nid = producer.enqueue(tenant_id, _msg())

    assert _rows(engine, id=nid)[0].tenant_id == tenant_id


def test_producer_rejects_tenant_id_with_trailing_newline(producer: Producer, engine: Engine) -> None:
    with pytest.raises(ValidationFailed):
        producer.enqueue("acme\n", _msg())


@pytest.mark.parametrize("key", ["", "k" * 201, "line\nbreak", "tab\tkey", 7])
def test_producer_rejects_bad_idempotency_key(producer: Producer, engine: Engine, key: Any) -> None:
    with pytest.raises(ValidationFailed) as info:
        producer.enqueue("acme", _msg(), key)

    assert info.value.field == "[0].idempotency_key"
    assert _count(engine) == 0


def test_producer_rejects_item_that_is_not_an_item(producer: Producer, engine: Engine) -> None:
    with pytest.raises(ValidationFailed) as info:
        producer.enqueue_many([("acme", _msg()), ["acme", _msg()]])  # type: ignore[list-item]

    assert info.value.field == "[1]"
    assert _count(engine) == 0


def test_producer_names_non_object_message_field(producer: Producer) -> None:
    with pytest.raises(ValidationFailed) as info:
        producer.enqueue("acme", "not an object")  # type: ignore[arg-type]

    assert info.value.field == "[0].message"


def test_producer_idempotency_key_returns_same_id(producer: Producer, engine: Engine) -> None:
    first = producer.enqueue("acme", _msg(1), "order-42")

    again = producer.enqueue("acme", _msg(2), "order-42")
    in_batch = producer.enqueue_many([("acme", _msg(3), "order-42"), ("acme", _msg(4), "order-43")])

    assert again == first and in_batch[0] == first and in_batch[1] != first
    assert [r.payload["subject"] for r in _rows(engine, idempotency_key="order-42")] == ["Review 1"]
    assert _count(engine) == 2


def test_producer_idempotency_key_repeated_within_one_call(producer: Producer, engine: Engine) -> None:
    ids = producer.enqueue_many([("acme", _msg(1), "dup"), ("acme", _msg(2), "dup")])

    assert ids[0] == ids[1]
    assert _count(engine) == 1


def test_producer_idempotency_key_is_per_tenant(producer: Producer, engine: Engine) -> None:
    a = producer.enqueue("acme", _msg(), "same-key")
    b = producer.enqueue("beta", _msg(), "same-key")

    assert a != b
    assert _count(engine) == 2


def test_producer_without_key_never_deduplicates(producer: Producer, engine: Engine) -> None:
    ids = [producer.enqueue("acme", _msg()) for _ in range(3)]

    assert len(set(ids)) == 3
    assert _count(engine) == 3


def test_producer_fair_rank_spaces_a_tenant_and_interleaves_another(producer: Producer, engine: Engine) -> None:
    # given tenant A enqueues 100 at once
    a_ids = producer.enqueue_many([("tenant-a", _msg(i)) for i in range(100)])
    # when tenant B enqueues later
    b_id = producer.enqueue("tenant-b", _msg(100))

    # then A's ranks are fair_spacing_ms apart and B's single row sorts among A's, not after them
    ranks = {r.id: r.fair_rank for r in _rows(engine)}
    a_ranks = [ranks[i] for i in a_ids]
    assert [b - a for a, b in zip(a_ranks, a_ranks[1:], strict=False)] == [SPACING_MS] * 99
    assert a_ranks[0] < ranks[b_id] < a_ranks[-1]
    order = [r.id for r in _rows(engine)]
    assert 0 < order.index(b_id) < 99


def test_producer_fair_rank_continues_after_tenant_backlog(producer: Producer, engine: Engine) -> None:
    first = producer.enqueue_many([("tenant-a", _msg(i)) for i in range(100)])

    later = producer.enqueue("tenant-a", _msg(100))

    ranks = {r.id: r.fair_rank for r in _rows(engine)}
    assert ranks[later] == ranks[first[-1]] + SPACING_MS


def test_producer_new_row_is_due_now(producer: Producer, engine: Engine) -> None:
    nid = producer.enqueue("acme", _msg())

    row = _rows(engine, id=nid)[0]
    assert abs(row.next_attempt_ms - row.fair_rank) < 5_000
    assert row.created_at is not None and row.updated_at is not None
