"""one lease column per lease: dispatch and send

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

notification.lease_until_ms meant the dispatch lease (queued, retry_wait: published, not yet
claimed) or the send lease (sending: the worker renews it), depending on the state. Each gets its
own column and partial index; existing values are carried over by state.
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

_ACTIVE = "state IN ('queued', 'retry_wait')"
_SENDING = "state = 'sending'"
_OLD = "state IN ('queued', 'retry_wait', 'sending')"


def upgrade() -> None:
    with op.batch_alter_table('notification', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dispatch_lease_until_ms', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('send_lease_until_ms', sa.BigInteger(), nullable=True))
    op.execute(f"UPDATE notification SET send_lease_until_ms = lease_until_ms WHERE {_SENDING}")
    op.execute(f"UPDATE notification SET dispatch_lease_until_ms = lease_until_ms WHERE NOT ({_SENDING})")
    with op.batch_alter_table('notification', schema=None) as batch_op:
        batch_op.drop_index('ix_notification_lease', postgresql_where=sa.text(_OLD), sqlite_where=sa.text(_OLD))
        batch_op.drop_column('lease_until_ms')
        batch_op.create_index('ix_notification_dispatch_lease', ['dispatch_lease_until_ms'], unique=False, postgresql_where=sa.text(_ACTIVE), sqlite_where=sa.text(_ACTIVE))
        batch_op.create_index('ix_notification_send_lease', ['send_lease_until_ms'], unique=False, postgresql_where=sa.text(_SENDING), sqlite_where=sa.text(_SENDING))


def downgrade() -> None:
    with op.batch_alter_table('notification', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lease_until_ms', sa.BigInteger(), nullable=True))
    op.execute("UPDATE notification SET lease_until_ms = COALESCE(send_lease_until_ms, dispatch_lease_until_ms)")
    with op.batch_alter_table('notification', schema=None) as batch_op:
        batch_op.drop_index('ix_notification_send_lease', postgresql_where=sa.text(_SENDING), sqlite_where=sa.text(_SENDING))
        batch_op.drop_index('ix_notification_dispatch_lease', postgresql_where=sa.text(_ACTIVE), sqlite_where=sa.text(_ACTIVE))
        batch_op.drop_column('send_lease_until_ms')
        batch_op.drop_column('dispatch_lease_until_ms')
        batch_op.create_index('ix_notification_lease', ['lease_until_ms'], unique=False, postgresql_where=sa.text(_OLD), sqlite_where=sa.text(_OLD))
