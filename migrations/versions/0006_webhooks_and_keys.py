"""webhooks (endpoints, event outbox, deliveries, attempts) and manageable API keys

Revision ID: 0006
Revises: 0003 (temporarily: re-parented onto the newest revision when merged)
Create Date: 2026-12-03

webhook_event is the outbox of events, inserted in the transaction of the outcome or save that
causes them; webhook_delivery is one event for one endpoint, claimed by workers with conditional
updates; webhook_attempt is the delivery log. api_key gains an expiry, the time it was last used and,
for `service` keys, the tenants it may act for.
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

_S = sqlmodel.sql.sqltypes.AutoString
_BIGID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('tenants', sa.JSON(), nullable=True))

    op.create_table('webhook_endpoint',
    sa.Column('id', _S(length=40), nullable=False),
    sa.Column('tenant_id', _S(length=64), nullable=False),
    sa.Column('url', _S(length=2048), nullable=False),
    sa.Column('description', _S(length=200), nullable=True),
    sa.Column('event_types', sa.JSON(), nullable=False),
    sa.Column('secret_enc', sa.LargeBinary(), nullable=False),
    sa.Column('previous_secret_enc', sa.LargeBinary(), nullable=True),
    sa.Column('previous_valid_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('disabled_reason', _S(length=500), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_webhook_endpoint_tenant', 'webhook_endpoint', ['tenant_id'], unique=False)

    op.create_table('webhook_event',
    sa.Column('id', _S(length=40), nullable=False),
    sa.Column('tenant_id', _S(length=64), nullable=False),
    sa.Column('type', _S(length=64), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_webhook_event_tenant', 'webhook_event', ['tenant_id', 'created_at'], unique=False)

    op.create_table('webhook_delivery',
    sa.Column('id', _S(length=32), nullable=False),
    sa.Column('event_id', _S(length=40), nullable=False),
    sa.Column('endpoint_id', _S(length=40), nullable=False),
    sa.Column('tenant_id', _S(length=64), nullable=False),
    sa.Column('state', _S(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_ms', sa.BigInteger(), nullable=False),
    sa.Column('lease_until_ms', sa.BigInteger(), nullable=True),
    sa.Column('claimed_by', _S(length=100), nullable=True),
    sa.Column('window_start_ms', sa.BigInteger(), nullable=False),
    sa.Column('last_status', sa.Integer(), nullable=True),
    sa.Column('last_error', _S(length=500), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_webhook_delivery_endpoint', 'webhook_delivery', ['endpoint_id', 'created_at'], unique=False)
    op.create_index('ix_webhook_delivery_due', 'webhook_delivery', ['next_attempt_ms'], unique=False,
                    postgresql_where=sa.text("state = 'pending'"), sqlite_where=sa.text("state = 'pending'"))

    op.create_table('webhook_attempt',
    sa.Column('id', _BIGID, autoincrement=True, nullable=False),
    sa.Column('delivery_id', _S(length=32), nullable=False),
    sa.Column('tenant_id', _S(length=64), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('error', _S(length=500), nullable=True),
    sa.Column('latency_ms', sa.Float(), nullable=True),
    sa.Column('worker', _S(length=100), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_webhook_attempt_delivery', 'webhook_attempt', ['delivery_id'], unique=False)


def downgrade() -> None:
    op.drop_table('webhook_attempt')
    op.drop_table('webhook_delivery')
    op.drop_table('webhook_event')
    op.drop_table('webhook_endpoint')
    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.drop_column('tenants')
        batch_op.drop_column('last_used_at')
        batch_op.drop_column('expires_at')
