"""held queues and resends: where a notification's maximum age counts from

Revision ID: 0007
Revises: 0005 (temporarily; "0006" once the branch that adds it lands on main)
Create Date: 2026-12-02

notification gains `age_from`: when a resend or the release of a held queue put the row back. The
retry policy's maximum age (TENANTMAIL_MAX_AGE_S) counts from it when set, else from `created_at`,
so a notification held for two days, or resent a week later, gets a full retry window again. The
`held` state itself needs no migration (`state` is a string).
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('notification', schema=None) as batch_op:
        batch_op.add_column(sa.Column('age_from', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('notification', schema=None) as batch_op:
        batch_op.drop_column('age_from')
