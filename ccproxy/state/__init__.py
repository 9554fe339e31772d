"""State shared by every ccproxy process that points at the same Redis (per-client
concurrency and request rate, budget counters, breakers), or kept in this process
when no `state:` is configured; a Redis that is slow or down falls back to this
process's own counters, never blocking a request."""
