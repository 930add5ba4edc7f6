"""named senders: several sender mailboxes under one tenant's app

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

provider_config gains `senders` (JSON): the version's senders by name, `default` included, each with
address, display name, reply-to and daily recipient limit. Existing versions keep NULL and are read
through a compatible path (shared.senders.senders_of): their one sender, `default`, is the
`sender_address`, `sender_name` and `reply_to` columns they already have. No row is rewritten, so
the upgrade is instant on a large table and the downgrade loses only named senders added since.

Exchange's sending limits (issue 14 part 2): provider_config gains `daily_external_recipient_limit`
(the tenant's optional external-recipient budget per rolling 24 h) and notification gains
`wait_reason`: why a `retry_wait` or `held` row waits when it is not its own last error: "quota" (its
sender's budget), an open circuit breaker (`graph_outage`, `entra_outage`, `mailbox_outage`,
`relay_outage`), `throttled` or `held` (shared.models.WaitReason).
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('provider_config', schema=None) as batch_op:
        batch_op.add_column(sa.Column('senders', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('daily_external_recipient_limit', sa.Integer(), nullable=True))
    with op.batch_alter_table('notification', schema=None) as batch_op:
        batch_op.add_column(sa.Column('wait_reason', sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('notification', schema=None) as batch_op:
        batch_op.drop_column('wait_reason')
    with op.batch_alter_table('provider_config', schema=None) as batch_op:
        batch_op.drop_column('daily_external_recipient_limit')
        batch_op.drop_column('senders')
