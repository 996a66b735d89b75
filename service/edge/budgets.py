"""The budgets at the edge (service/application/budgets.py keeps their
arithmetic): who a client is by address, what a refusal looks like (429
``rate_limited`` with ``Retry-After``), what a WebSocket upgrade is charged
before anything is recorded, and the caps on request bodies in flight (the
node's, each address's share of it, and how long one body may take)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
from collections.abc import AsyncIterator

from aiohttp import web

from service.application import commands
from service.application.auth import AuthError, Principal
from service.application.budgets import BytesInFlight, BytesPerKey, SocketAdmission
from service.application.writer import StoreUnavailable
from service.edge.context import BUDGETS, SETTINGS, SIGNER, WRITER
from service.edge.errors import ApiError

# What a refusal for bodies in flight (503 for the node's cap, 429 for an
# address's share) tells the client to wait: bodies are read in
# milliseconds, so the next second is already another situation.
BODIES_RETRY = 1.0

# A body this small is never refused for its address's share: it costs the
# node little, and an honest request beside another's large bodies from the
# same address (the same proxy, the same test process) must not fail because
# of them. It still counts toward the node's cap, and has the deadline.
SMALL_BODY = 64 * 1024


def client_address(request: web.Request) -> str:
    """The client's address as its budgets know it: the peer's, or with
    ``forwarded_hops`` N, the N-th ``X-Forwarded-For`` entry from the right
    (the one the nearest trusted proxy wrote). An IPv6 client is its /64,
    the block one host is usually given."""
    address = request.remote or ""
    hops = request.app[SETTINGS].forwarded_hops
    if hops:
        forwarded = [
            entry.strip()
            for header in request.headers.getall("X-Forwarded-For", ())
            for entry in header.split(",")
            if entry.strip()
        ]
        if len(forwarded) >= hops:
            address = forwarded[-hops]
    return address_key(address)


# Remembered: a handful of addresses (clients, proxies) make most requests,
# and parsing one is a few microseconds of every request's budget check.
@functools.lru_cache(maxsize=4096)
def address_key(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def rate_limited(message: str, retry_after: float) -> ApiError:
    return ApiError("rate_limited", message, retry_after=retry_after)


async def admit_socket(
    request: web.Request, header_token: str | None, session_id: str
) -> SocketAdmission:
    """A WebSocket upgrade and the budgets, before anything is recorded: a
    valid token in the upgrade request spends one of its user's upgrades and
    holds one of its live sockets, and when the user has no sessions left to
    create, an upgrade that would create one is refused; without a token,
    the upgrade waits for its token as one of its address's pending
    upgrades, and is refused once the address has spent its failed ones.
    Over budget: 429, and nothing is held."""
    budgets = request.app[BUDGETS]
    admission = SocketAdmission(budgets, client_address(request))
    user: Principal | None = None
    if header_token:
        with contextlib.suppress(AuthError):
            user = request.app[SIGNER].verify(header_token)
    wait = admission.before_upgrade(None if user is None else user.user_id)
    if wait:
        if user is not None:
            sockets = budgets.user_sockets
            if sockets.limit and sockets.held(user.user_id) >= sockets.limit:
                raise rate_limited(f"user {user.user_id!r} holds every live socket allowed", wait)
            raise rate_limited(
                f"user {user.user_id!r} is opening sockets faster than "
                f"{budgets.user_upgrades.rate} allows",
                wait,
            )
        raise rate_limited("too many upgrades without a token from this address", wait)
    if user is not None and user.can_write:
        # The session budget is spent by the writer, inside the attach; read
        # here without a lock, it may be a moment behind, which at worst
        # leaves the attach's own refusal (close 4429) to decide. Only a user
        # with nothing left pays for the question whether the session exists.
        wait = budgets.user_sessions.peek(user.user_id)
        if wait:
            try:
                exists = await request.app[WRITER].execute(commands.session_recorded(session_id))
            except StoreUnavailable as e:
                admission.release()
                raise ApiError("unavailable", str(e)) from None
            except BaseException:
                admission.release()
                raise
            if not exists:
                admission.release()
                raise rate_limited(
                    f"user {user.user_id!r} is creating sessions faster than "
                    f"{budgets.user_sessions.rate} allows",
                    wait,
                )
    return admission


async def read_body(request: web.Request) -> bytes:
    """The request's body, read under the caps on bodies being read at once:
    each reserves its ``Content-Length`` (the body limit when it has none)
    while it is read, against its client address's share unless it is small
    (past it: 429 ``rate_limited``, that address only) and the node's cap
    (past it: 503 ``unavailable``), both before a byte of it is read. A body that has not
    all arrived within ``body_timeout`` is refused 400 ``invalid_body`` and
    its reservation given back."""
    settings = request.app[SETTINGS]
    limit = settings.max_body_bytes
    size = min(request.content_length or limit, limit)
    budgets = request.app[BUDGETS]
    shared = size if size > SMALL_BODY else 0  # what counts against the share
    async with _held(
        request,
        (budgets.address_bodies, shared, "this address is sending {} bytes of request bodies"),
        (budgets.bodies, size, "the node is reading {} bytes of request bodies"),
    ):
        try:
            if request.content.is_eof():
                # All of it arrived with its headers (nearly every small
                # body): nothing to wait for, so no deadline to arm (a timer
                # per request, a few microseconds of the loop each).
                return await request.read()
            async with asyncio.timeout(settings.body_timeout):
                return await request.read()
        except TimeoutError:
            raise ApiError(
                "invalid_body",
                f"the body did not arrive within {settings.body_timeout:g} s",
            ) from None
        except web.RequestPayloadError as e:
            # The body does not decode as its headers say (a corrupt gzip or
            # deflate body, a malformed chunk): the client's mistake.
            raise ApiError("invalid_body", f"the body could not be read: {e}") from e


@contextlib.asynccontextmanager
async def _held(
    request: web.Request,
    address_share: tuple[BytesPerKey, int, str],
    node_cap: tuple[BytesInFlight, int, str],
) -> AsyncIterator[None]:
    """Bytes held against the client address's share and the node's cap
    while the block runs, each given as (budget, bytes, what is held, with a
    ``{}`` for the bytes held already), both taken before it starts: past the
    share 429 ``rate_limited`` (that address only; no bytes: not counted),
    past the cap 503 ``unavailable``, each with a time to retry."""
    share, shared, held_by_address = address_share
    cap, size, held_by_node = node_cap
    address = client_address(request)
    if shared and not share.reserve(address, shared):
        raise rate_limited(
            held_by_address.format(share.reserved(address))
            + " at once, its share of the node's; try again",
            BODIES_RETRY,
        )
    try:
        if not cap.reserve(size):
            raise ApiError(
                "unavailable",
                held_by_node.format(cap.reserved) + "; try again",
                retry_after=BODIES_RETRY,
            )
        try:
            yield
        finally:
            cap.release(size)
    finally:
        if shared:
            share.release(address, shared)


# The methods whose answers are held to the caps on answers in flight.
_READS = frozenset({"GET", "HEAD"})


async def send_answer(request: web.Request, answer: web.StreamResponse) -> web.StreamResponse:
    """Send ``answer`` now when it is a built body over 64 KiB (a page of
    events, a past state, a list of large sessions), holding its size against
    the caps on answers being sent at once until it has left: its client
    address's share (past it: 429 ``rate_limited``, that address only) and
    the node's cap (past it: 503 ``unavailable``), both before a byte of it
    is sent. A client that stops reading would otherwise keep each answer it
    asked for in the node's memory for as long as it keeps the connection;
    one whose answer has not left within ``answer_timeout`` loses the
    connection, and the answer's bytes are given back. Smaller answers,
    answers already sent (a stream, an upgrade), and the answers to writes
    (what they recorded is recorded: a 429 would tell the client otherwise;
    writes have budgets of their own) are left to aiohttp."""
    if not isinstance(answer, web.Response) or answer.prepared:
        return answer
    if request.method not in _READS:
        return answer
    body = answer.body
    size = len(body) if isinstance(body, bytes | bytearray) else 0
    if size <= SMALL_BODY:
        return answer
    budgets = request.app[BUDGETS]
    async with _held(
        request,
        (budgets.address_answers, size, "this address is being sent {} bytes of answers"),
        (budgets.answers, size, "the node is sending {} bytes of answers"),
    ):
        try:
            async with asyncio.timeout(request.app[SETTINGS].answer_timeout):
                await answer.prepare(request)
                await answer.write_eof()
        except TimeoutError:
            # The client does not read: drop the connection and what it
            # left unsent (aiohttp's own finish of the answer then finds
            # the connection gone, which it takes quietly).
            if request.transport is not None:
                request.transport.abort()
        except ConnectionError:
            pass  # the client went away; aiohttp takes that quietly too
    return answer
