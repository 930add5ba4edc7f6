"""onboarding: where a credential's expiry came from, and which version a restore brought back

Revision ID: 0005
Revises: 0003 (temporarily; "0004" once the error-code enumeration lands on main)
Create Date: 2026-12-03

provider_config gains `expiry_source` ("entered", "graph", "certificate", "kept", or NULL when the expiry
is unknown); provider_history gains `restored_from`, the version a restore copied.
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('provider_config', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expiry_source', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True))
    op.execute("UPDATE provider_config SET expiry_source = 'certificate' WHERE credential_type = 'certificate'")
    op.execute("UPDATE provider_config SET expiry_source = 'entered' "
               "WHERE credential_type = 'secret' AND secret_expires_at IS NOT NULL")
    with op.batch_alter_table('provider_history', schema=None) as batch_op:
        batch_op.add_column(sa.Column('restored_from', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('provider_history', schema=None) as batch_op:
        batch_op.drop_column('restored_from')
    with op.batch_alter_table('provider_config', schema=None) as batch_op:
        batch_op.drop_column('expiry_source')
