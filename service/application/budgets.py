"""Budgets: how much one user, or one client address, may ask of a node.

Two kinds, both keyed by a string (a user ID, a client address):

- :class:`RateBudget`: so many in a burst, refilled evenly (``count`` per
  ``period``), kept as one number per key (GCRA: the time at which the key's
  bucket is full again). A refusal says how long until one more fits, which
  is the ``Retry-After`` of a 429.
- :class:`InFlight`: so many held at once (live sockets, upgrades waiting for
  their token), counted up and down.
- :class:`BytesInFlight` and :class:`BytesPerKey`: bytes of request bodies
  being read, and of answers being sent, at once, across the node and per
  client address.

Memory is bounded for all: a rate key whose bucket is full again is the same
as no key and is swept away, at most :data:`MAX_KEYS` keys are kept (newer
keys past that share one bucket), and an in-flight key goes when its count
(or its bytes) returns to 0. Each budget is used from one thread only (the
event loop; the session budget from the writer thread, inside the create
command), so none takes a lock.

:class:`SocketAdmission` is one socket's standing with these budgets, from
its upgrade to its end. docs/adr/0027-bound-every-caller-by-budgets-and-every-queue-by-bytes.md
says what is limited and why the defaults let honest use through.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

from domain.errors import DomainError
from service.runtime.settings import Rate, Settings

# Rate keys kept at most; past it, new keys share one bucket. About 100 bytes
# a key: some 10 MB per budget at worst.
MAX_KEYS = 100_000
SHARED_KEY = ""
# What a refusal of a count (not a rate) tells the client to wait.
RETRY_HELD = 1.0


class RateLimited(DomainError):
    """Over a budget; ``retry_after`` seconds until it would be admitted."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` in whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


# ``now + interval - now`` is not always ``interval`` in floating point: a
# budget with room for exactly one more would refuse it now and then, seen as
# a fresh address's first request refused 429. A nanosecond's tolerance.
_ROUNDING = 1e-9


class RateBudget:
    """``rate.count`` at once, refilled at ``rate.count / rate.period`` a second,
    per key; no rate is no budget."""

    def __init__(
        self,
        rate: Rate | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.rate = rate
        self._clock = clock
        self._max_keys = max_keys
        self._full_at: dict[str, float] = {}
        self._interval = rate.period / rate.count if rate is not None else 0.0
        self._next_sweep = 0.0

    def take(self, key: str, cost: int = 1) -> float:
        """Spend ``cost`` of ``key``'s budget: 0.0 when admitted, else the
        seconds until it would be (and nothing is spent)."""
        if self.rate is None:
            return 0.0
        now = self._clock()
        key = self._slot(key, now)
        full_at = max(self._full_at.get(key, now), now) + cost * self._interval
        over = full_at - now - self.rate.period
        if over > _ROUNDING:
            return over
        self._full_at[key] = full_at
        return 0.0

    def peek(self, key: str) -> float:
        """What :meth:`take` of 1 would answer, spending nothing."""
        if self.rate is None:
            return 0.0
        now = self._clock()
        full_at = max(self._full_at.get(key, now), now) + self._interval
        over = full_at - now - self.rate.period
        return over if over > _ROUNDING else 0.0

    def __len__(self) -> int:
        return len(self._full_at)

    def _slot(self, key: str, now: float) -> str:
        """``key``, or the shared key when the table is full of live keys."""
        if now >= self._next_sweep:
            self._sweep(now)
        if key in self._full_at or len(self._full_at) < self._max_keys:
            return key
        return SHARED_KEY

    def _sweep(self, now: float) -> None:
        """Forget every key whose bucket is full again (as good as unseen)."""
        assert self.rate is not None
        self._full_at = {k: t for k, t in self._full_at.items() if t > now}
        self._next_sweep = now + max(self.rate.period, 1.0)


class InFlight:
    """At most ``limit`` held at once per key (0: no limit)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}

    def acquire(self, key: str) -> bool:
        held = self._held.get(key, 0)
        if self.limit and held >= self.limit:
            return False
        self._held[key] = held + 1
        return True

    def release(self, key: str) -> None:
        held = self._held.get(key, 0) - 1
        if held > 0:
            self._held[key] = held
        else:
            self._held.pop(key, None)

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    def __len__(self) -> int:
        return len(self._held)


class BytesInFlight:
    """Bytes reserved at once across all holders, at most ``limit`` (0: no
    limit); one reservation alone is always admitted, whatever its size."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.reserved = 0

    def reserve(self, size: int) -> bool:
        if self.limit and self.reserved and self.reserved + size > self.limit:
            return False
        self.reserved += size
        return True

    def release(self, size: int) -> None:
        self.reserved -= size


class BytesPerKey:
    """Bytes reserved at once per key, at most ``limit`` each (0: no limit);
    a key's one reservation alone is always admitted, whatever its size. A
    key is kept only while it holds bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._reserved: dict[str, int] = {}

    def reserve(self, key: str, size: int) -> bool:
        held = self._reserved.get(key, 0)
        if self.limit and held and held + size > self.limit:
            return False
        self._reserved[key] = held + size
        return True

    def release(self, key: str, size: int) -> None:
        held = self._reserved.get(key, 0) - size
        if held > 0:
            self._reserved[key] = held
        else:
            self._reserved.pop(key, None)

    def reserved(self, key: str) -> int:
        return self._reserved.get(key, 0)

    def __len__(self) -> int:
        return len(self._reserved)


class Budgets:
    """Every budget of one node, from its settings."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.user_writes = RateBudget(settings.user_writes, clock=clock)
        # Taken from the writer thread only, inside the commands that create.
        self.user_sessions = RateBudget(settings.user_sessions, clock=clock)
        self.user_sockets = InFlight(settings.user_sockets)
        self.user_upgrades = RateBudget(settings.user_upgrades, clock=clock)
        self.user_watchers = InFlight(settings.user_watchers)
        self.pending_upgrades = InFlight(settings.address_pending_upgrades)
        self.failed_upgrades = RateBudget(settings.address_failed_upgrades, clock=clock)
        self.unauthenticated = RateBudget(settings.address_unauthenticated, clock=clock)
        self.bodies = BytesInFlight(settings.bodies_in_flight_bytes)
        self.address_bodies = BytesPerKey(settings.address_bodies_in_flight_bytes)
        self.answers = BytesInFlight(settings.answers_in_flight_bytes)
        self.address_answers = BytesPerKey(settings.address_answers_in_flight_bytes)

    def session_gate(self, user_id: str) -> Callable[[], None]:
        """What a create command calls just before it creates a session for
        ``user_id``: spends one of the user's sessions or raises RateLimited.
        The writer may run a command twice (ADR 0018); the gate decides once."""
        verdict: list[float] = []

        def admit() -> None:
            if not verdict:
                verdict.append(self.user_sessions.take(user_id))
            if verdict[0] > 0:
                raise RateLimited(
                    f"user {user_id!r} is creating sessions faster than "
                    f"{self.user_sessions.rate} allows",
                    verdict[0],
                )

        return admit

    def write(self, user_id: str) -> float:
        """One write (an HTTP POST or DELETE, a socket's message or refresh) by ``user_id``."""
        return self.user_writes.take(user_id)


class Admission(Protocol):
    """What a connection's protocol asks of the budgets."""

    def authenticated(self, user_id: str) -> bool:
        """The socket's token names ``user_id``: may it open one more socket
        (one more of its upgrades, one more live socket)?"""

    def write(self, user_id: str) -> float:
        """A ``message`` frame or a token refresh: 0.0, or the seconds until one fits."""

    def session_gate(self, user_id: str) -> Callable[[], None] | None:
        """The gate an attach that creates the session passes (None: none)."""


class Unlimited:
    """An admission that admits everything (the protocol's unit tests)."""

    def authenticated(self, user_id: str) -> bool:
        return True

    def write(self, user_id: str) -> float:
        return 0.0

    def session_gate(self, user_id: str) -> Callable[[], None] | None:
        return None


class SocketAdmission:
    """One socket's standing with the budgets: until it authenticates, one of
    its address's pending upgrades (and, if it never does, one of its failed
    ones); once it does, one of its user's upgrades spent and one of its live
    sockets held. :meth:`ended` gives back whatever is held."""

    def __init__(self, budgets: Budgets, address: str) -> None:
        self.budgets = budgets
        self.address = address
        self.user_id: str | None = None  # holds one of this user's live sockets
        self.pending = False  # holds one of the address's pending upgrades
        self.authenticated_once = False

    def before_upgrade(self, user_id: str | None) -> float:
        """Before anything is recorded: 0.0 to go on, else seconds to wait.
        ``user_id`` is the upgrade request's valid token's, if it had one."""
        if user_id is not None:
            return self._admit_user(user_id)
        budgets = self.budgets
        wait = budgets.failed_upgrades.peek(self.address)
        if wait > 0:
            return wait
        if not budgets.pending_upgrades.acquire(self.address):
            return RETRY_HELD
        self.pending = True
        return 0.0

    def authenticated(self, user_id: str) -> bool:
        return self._admit_user(user_id) == 0.0

    def _admit_user(self, user_id: str) -> float:
        """The socket is ``user_id``'s: 0.0 once it spends one of the user's
        upgrades and holds one of its live sockets, else the seconds until
        one would fit (nothing spent). Asked again for the same user (the
        protocol asks after the shell did), it is already admitted."""
        if self.user_id == user_id:
            return 0.0
        self.authenticated_once = True
        self._release_pending()
        if self.user_id is not None:  # another user's socket already
            return RETRY_HELD
        budgets = self.budgets
        if not budgets.user_sockets.acquire(user_id):
            return RETRY_HELD
        wait = budgets.user_upgrades.take(user_id)
        if wait > 0:
            budgets.user_sockets.release(user_id)
            return wait
        self.user_id = user_id
        return 0.0

    def write(self, user_id: str) -> float:
        return self.budgets.write(user_id)

    def session_gate(self, user_id: str) -> Callable[[], None] | None:
        return self.budgets.session_gate(user_id)

    def ended(self) -> None:
        """The socket is over: one of its address's failed upgrades if it
        never authenticated, and whatever it held given back."""
        if not self.authenticated_once:
            self.authenticated_once = True  # charged once
            self.budgets.failed_upgrades.take(self.address)
        self.release()

    def release(self) -> None:
        """Give back whatever is held, charging nothing (an upgrade refused
        before anything was recorded)."""
        self._release_pending()
        if self.user_id is not None:
            self.budgets.user_sockets.release(self.user_id)
            self.user_id = None

    def _release_pending(self) -> None:
        if self.pending:
            self.pending = False
            self.budgets.pending_upgrades.release(self.address)
