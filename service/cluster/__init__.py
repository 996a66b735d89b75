"""Several nodes on one PostgreSQL: following the shared log, and telling a
dead node from a live one."""
