"""Failure detection between nodes that share one store.

Each node writes a heartbeat row (``sessiond_nodes``) every third of
``node_timeout``. Every live node also looks for nodes whose heartbeat is
older than ``node_timeout``, and records each of their connections still
open in the read model as CLOSED with reason ``lost`` (detaching it from its
session), then forgets the dead node. Closing is idempotent, so two peers
doing it at once record it once. The clock is the database's (``now()`` on
PostgreSQL), so nodes' clocks need not agree. A node's own restart does the
same for itself at once (service/edge/app.py). See
docs/adr/0011-detect-dead-nodes-by-heartbeat-rows.md.
"""

from __future__ import annotations

import time

from projections.tables import PostgresTables, Tables

DDL = """CREATE TABLE IF NOT EXISTS sessiond_nodes (
    node TEXT PRIMARY KEY,
    last_seen DOUBLE PRECISION NOT NULL
)"""


class NodeRegistry:
    def __init__(self, tables: Tables, node_id: str) -> None:
        self.tables = tables
        self.node_id = node_id
        self._pg = isinstance(tables, PostgresTables)

    def _now_sql(self) -> str:
        return "EXTRACT(EPOCH FROM clock_timestamp())" if self._pg else "?"

    def setup(self) -> None:
        self.tables.create([DDL])

    def heartbeat(self) -> None:
        params: list[object] = [self.node_id] + ([] if self._pg else [time.time()])
        with self.tables.write() as c:
            c.execute(
                self.tables.sql(
                    f"INSERT INTO sessiond_nodes (node, last_seen) VALUES (?, {self._now_sql()}) "
                    "ON CONFLICT (node) DO UPDATE SET last_seen = excluded.last_seen"
                ),
                params,
            )

    def heartbeats(self) -> dict[str, float]:
        """Each node's last heartbeat, in the store's clock."""
        with self.tables.read() as c:
            c.execute(self.tables.sql("SELECT node, last_seen FROM sessiond_nodes"), [])
            return {str(node): float(seen) for node, seen in c.fetchall()}

    def dead_nodes(self, timeout: float) -> list[str]:
        params: list[object] = ([] if self._pg else [time.time()]) + [timeout, self.node_id]
        with self.tables.read() as c:
            c.execute(
                self.tables.sql(
                    f"SELECT node FROM sessiond_nodes WHERE last_seen < {self._now_sql()} - ? "
                    "AND node <> ?"
                ),
                params,
            )
            return [str(node) for (node,) in c.fetchall()]

    def forget(self, node: str) -> None:
        with self.tables.write() as c:
            c.execute(self.tables.sql("DELETE FROM sessiond_nodes WHERE node = ?"), [node])
