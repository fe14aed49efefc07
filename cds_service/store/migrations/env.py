"""Alembic environment: run by FeedbackStore.migrate() on its own connection and transaction.

From the command line (`alembic -c cds_service/store/migrations/alembic.ini revision ...`)
the database is CDS_DATABASE_URL, else the default SQLite file in ./instance.
"""

from __future__ import annotations

import os
from pathlib import Path

from alembic import context

from cds_service.store.schema import metadata
from cds_service.store.store import VERSION_TABLE, database_url, make_engine


def run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        # SQLite alters tables by copying them; batch mode writes migrations that way.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    engine = make_engine(database_url(os.environ.get("CDS_DATABASE_URL"), Path("instance")))
    with engine.begin() as own_connection:
        run(own_connection)
    engine.dispose()
