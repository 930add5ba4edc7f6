"""circuit breakers: why a notification waits

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

notification gains `wait_reason`: why a `retry_wait` (or `held`) row waits when that is not its own
last error: `graph_outage`, `entra_outage`, `mailbox_outage`, `relay_outage` (an open circuit breaker,
worker/breakers.py), `throttled` (a Retry-After) or `held` (a hold). NULL otherwise.
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('notification', schema=None) as batch_op:
        batch_op.add_column(sa.Column('wait_reason', sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('notification', schema=None) as batch_op:
        batch_op.drop_column('wait_reason')
