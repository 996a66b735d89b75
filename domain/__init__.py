"""sessiond's domain: sessions, connections and the connection lifecycle.

Pure: nothing here does I/O, imports aiohttp or asyncio, or talks SQL. The
aggregates are eventsourcing aggregates; the lifecycle is a
python-statemachine class. Everything that can change what a session or a
connection is goes through a command method here and is recorded as events.
"""
