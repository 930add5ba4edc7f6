"""normalized recipients: the activity's recipient filter as an exact, indexed match

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

notification_recipient holds one row per distinct trimmed, lower-cased address of a notification's
to, cc and bcc (shared/recipients.py), written by the producer with the notification. The upgrade
backfills it from the payloads of the notifications already stored, in chunks in key order so that
neither database holds a long transaction's worth of rows in memory.
"""
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

_CHUNK = 2000
_notification = sa.table('notification', sa.column('id', sa.String), sa.column('tenant_id', sa.String),
                         sa.column('payload', sa.JSON))


def upgrade() -> None:
    recipients = op.create_table(
        'notification_recipient',
        sa.Column('notification_id', sa.String(length=32), nullable=False),
        sa.Column('address', sa.String(length=320), nullable=False),
        sa.Column('tenant_id', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('notification_id', 'address'),
    )
    op.create_index('ix_notification_recipient_lookup', 'notification_recipient', ['tenant_id', 'address'])
    _backfill(op.get_bind(), recipients)


def _backfill(conn: sa.Connection, recipients: sa.Table) -> None:
    after = ''
    while True:
        rows = conn.execute(sa.select(_notification.c.id, _notification.c.tenant_id, _notification.c.payload)
                            .where(_notification.c.id > after).order_by(_notification.c.id).limit(_CHUNK)).all()
        if not rows:
            return
        values = [{'notification_id': nid, 'tenant_id': tenant_id, 'address': address}
                  for nid, tenant_id, payload in rows for address in _addresses(payload or {})]
        if values:
            conn.execute(recipients.insert(), values)
        after = rows[-1].id


def _addresses(payload: Mapping[str, Any]) -> list[str]:
    # The same form as shared.recipients.recipients_of, kept here so the migration never changes with the code.
    seen: dict[str, None] = {}
    for field in ('to', 'cc', 'bcc'):
        for r in payload.get(field) or ():
            address = r.get('address') if isinstance(r, Mapping) else r
            if isinstance(address, str) and address.strip():
                seen.setdefault(address.strip().lower()[:320], None)
    return list(seen)


def downgrade() -> None:
    op.drop_index('ix_notification_recipient_lookup', table_name='notification_recipient')
    op.drop_table('notification_recipient')
