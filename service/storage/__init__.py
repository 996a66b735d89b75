"""Storage: the event store (an eventsourcing application), its recorders for
SQLite and PostgreSQL, the rows they read and write, and the wire shape of a
stored event."""
