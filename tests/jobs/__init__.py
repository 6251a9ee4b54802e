"""The task queue, its worker and monitor, on SQLite and Redis."""
