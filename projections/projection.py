"""What every read model is made of: rows and events in wire shape, and the
fold that takes one to the next."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# A read model's row: a view as PROTOCOL.md shows it.
Row = dict[str, Any]
# A recorded event as PROTOCOL.md shows it (service/storage/wire.py).
WireEvent = dict[str, Any]
# The row after an event, given the row before it (None: none yet). A fold
# never fails on an event it does not know: it leaves the row as it was, or
# moves only what every event moves.
Fold = Callable[[Row | None, WireEvent], Row | None]
