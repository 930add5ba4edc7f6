"""large attachments: their bytes apart from the row, the draft an attempt left, Mail.ReadWrite seen at save

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02

notification_attachment holds the bytes of each attachment that goes through a Graph upload session
(3 MiB or more, shared.message.UPLOAD_MIN_BYTES), one row per attachment, written by the producer with the
notification: the notification's payload keeps the attachment's name, type and size only, so claims, the
API and the activity never read megabytes, and no attachment travels through Redis or Celery.

notification gains `draft_id` and `draft_mailbox`: the Graph draft a large message's attempt created and
has not deleted yet, so the next attempt (after a crash, or a failed upload) deletes it and starts again.

provider_config gains `mail_readwrite`: whether the token the save was checked with held Mail.ReadWrite,
which drafts and upload sessions need. Existing versions keep NULL (unknown): saving again tells.
"""
import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'notification_attachment',
        sa.Column('notification_id', sa.String(length=32), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('size_bytes', sa.BigInteger(), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('content', sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint('notification_id', 'position'),
    )
    with op.batch_alter_table('notification', schema=None) as batch_op:
        batch_op.add_column(sa.Column('draft_id', sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column('draft_mailbox', sa.String(length=320), nullable=True))
    with op.batch_alter_table('provider_config', schema=None) as batch_op:
        batch_op.add_column(sa.Column('mail_readwrite', sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('provider_config', schema=None) as batch_op:
        batch_op.drop_column('mail_readwrite')
    with op.batch_alter_table('notification', schema=None) as batch_op:
        batch_op.drop_column('draft_mailbox')
        batch_op.drop_column('draft_id')
    op.drop_table('notification_attachment')
