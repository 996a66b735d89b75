"""Until when a socket may act on its token, and when to say so ahead.

A token's ``exp`` is wall-clock Unix seconds; the connection protocol's
``now`` is its shell's clock (the event loop's, monotonic). The shell gives
the offset between the two once, when the socket opens
(``wall_offset = time.time() - loop.time()``), and each ``exp`` is turned into
the shell's clock with it, so a wall clock stepped while a socket is open
(NTP) moves none of its deadlines.

The warning (``token_expiring``) comes ``lead`` seconds ahead of ``exp``, but
never more than a quarter of the time the token had left when it was
presented: a token of a few seconds is not warned about the moment it
arrives, and a client that refreshes on every warning with tokens as short
refreshes at most every three quarters of their life, never in a loop.
See docs/adr/0026-refresh-a-live-sockets-token-with-an-auth-frame.md.
"""

from __future__ import annotations

from dataclasses import dataclass

# The largest share of a token's remaining life the warning comes ahead of exp.
WARNING_SHARE = 0.25


@dataclass(slots=True)
class Expiry:
    """A socket's token deadline and its warning, on the shell's clock."""

    wall_offset: float  # wall-clock Unix seconds minus the shell's clock
    lead: float  # the warning comes at most this long before exp (0: never)
    exp: int | None = None  # the token's, in Unix seconds; None: no deadline
    expires_at: float | None = None
    warn_at: float | None = None
    warned: bool = False

    def hold(self, exp: int | None, now: float) -> None:
        """A token presented at ``now`` holds until ``exp``."""
        self.exp = exp
        self.warned = False
        if exp is None:
            self.expires_at = self.warn_at = None
            return
        expires_at = self.expires_at = exp - self.wall_offset
        ahead = min(self.lead, max(expires_at - now, 0.0) * WARNING_SHARE)
        self.warn_at = expires_at - ahead

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def warning_due(self, now: float) -> bool:
        """True once per token, when its warning is due and it still holds."""
        if self.warned or self.warn_at is None or now < self.warn_at or self.expired(now):
            return False
        self.warned = True
        return True

    def next_deadline(self, *, warn: bool) -> float | None:
        """When the clock must next be looked at: the warning (if ``warn`` and
        not yet given), else the expiry; None without a deadline."""
        if warn and not self.warned and self.warn_at is not None:
            return self.warn_at
        return self.expires_at
