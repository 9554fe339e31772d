"""The durable ledger: one row per request that reached routing, in SQLite (the
default, nothing to install) or PostgreSQL (shared by several hosts), written in
batches off the request path; what `/v1/usage`, `python -m ccproxy usage` and the
budgets read."""
