"""certificate credentials, SMTP attempts, admin contact and expiry reminders

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

provider_config gains the credential type ("secret" | "certificate"), the certificate's SHA-1
thumbprint and the tenant's admin contact for expiry reminders; delivery_attempt gains the SMTP
reply code and room for a whole Message-ID; expiry_reminder makes each reminder unique per
(tenant, config version, threshold).
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('provider_config', schema=None) as batch_op:
        batch_op.add_column(sa.Column('credential_type', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True))
        batch_op.add_column(sa.Column('cert_thumbprint', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True))
        batch_op.add_column(sa.Column('admin_contact_email', sqlmodel.sql.sqltypes.AutoString(length=320), nullable=True))
    op.execute("UPDATE provider_config SET credential_type = 'secret' WHERE secret_enc IS NOT NULL")

    with op.batch_alter_table('delivery_attempt', schema=None) as batch_op:
        batch_op.add_column(sa.Column('smtp_status', sa.Integer(), nullable=True))
    if op.get_bind().dialect.name == 'postgresql':
        # Widening a varchar is a catalogue change on PostgreSQL; SQLite does not enforce lengths.
        op.alter_column('delivery_attempt', 'client_request_id', type_=sqlmodel.sql.sqltypes.AutoString(length=255),
                        existing_type=sqlmodel.sql.sqltypes.AutoString(length=64), existing_nullable=True)

    op.create_table('expiry_reminder',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('tenant_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('config_version', sa.Integer(), nullable=False),
    sa.Column('threshold_days', sa.Integer(), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('notification_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant_id', 'config_version', 'threshold_days', name='uq_expiry_reminder')
    )


def downgrade() -> None:
    op.drop_table('expiry_reminder')
    if op.get_bind().dialect.name == 'postgresql':
        op.alter_column('delivery_attempt', 'client_request_id', type_=sqlmodel.sql.sqltypes.AutoString(length=64),
                        existing_type=sqlmodel.sql.sqltypes.AutoString(length=255), existing_nullable=True)
    with op.batch_alter_table('delivery_attempt', schema=None) as batch_op:
        batch_op.drop_column('smtp_status')
    with op.batch_alter_table('provider_config', schema=None) as batch_op:
        batch_op.drop_column('admin_contact_email')
        batch_op.drop_column('cert_thumbprint')
        batch_op.drop_column('credential_type')
