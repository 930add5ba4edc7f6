"""holds per sender: the sender an activity event concerns

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02

An Access Policy or RBAC refusal, ErrorSendAsDenied or MailboxNotEnabledForRESTAPI holds only the
sender mailbox it was met on (shared.holds). activity_event gains `sender`: the sender address a
`notifications_held` event concerns (NULL: the whole tenant, and every event before this one), so each
sender's hold is announced once. A held row's scope needs no column: its code and `sender` say it.
"""
import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('activity_event', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sender', sa.String(length=320), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('activity_event', schema=None) as batch_op:
        batch_op.drop_column('sender')
