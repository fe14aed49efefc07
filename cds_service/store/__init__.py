"""Where shown cards and feedback live: SQLAlchemy schema, store and Alembic migrations.

Public API: `store.FeedbackStore` (SQLite by default, PostgreSQL via `database_url`; migrated
at start), `store.ShownCard` (one card as shown, no patient identifier but a keyed hash),
`schema` (the tables) and `guard.StoreGuard` (a database call on the request path that never
costs a call more than its deadline, with a circuit breaker). `migrations/` holds the Alembic
revisions.
"""
