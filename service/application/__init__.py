"""The application: commands and the writer that commits them, the live hub
that fans recorded events out, the read models kept by the projector, tokens,
and audit replay. It knows nothing of HTTP or WebSocket."""
