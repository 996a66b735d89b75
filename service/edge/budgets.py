"""The budgets at the edge (service/application/budgets.py keeps their
arithmetic): who a client is by address, what a refusal looks like (429
``rate_limited`` with ``Retry-After``), and the cap on request bodies in
flight."""

from __future__ import annotations

import contextlib
import functools
import ipaddress

from aiohttp import web

from service.application.auth import AuthError, Principal
from service.application.budgets import SocketAdmission
from service.edge.context import BUDGETS, SETTINGS, SIGNER
from service.edge.errors import ApiError

# What a 503 for bodies in flight tells the client to wait: bodies are read
# in milliseconds, so the next second is already another situation.
BODIES_RETRY = 1.0


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


def admit_socket(request: web.Request, header_token: str | None) -> SocketAdmission:
    """A WebSocket upgrade and the budgets, before anything is recorded: a
    valid token in the upgrade request spends one of its user's live
    sockets; without one, the upgrade waits for its token as one of its
    address's pending upgrades, and is refused once the address has spent
    its failed ones. Over budget: 429."""
    admission = SocketAdmission(request.app[BUDGETS], client_address(request))
    user: Principal | None = None
    if header_token:
        with contextlib.suppress(AuthError):
            user = request.app[SIGNER].verify(header_token)
    wait = admission.before_upgrade(None if user is None else user.user_id)
    if wait:
        if user is not None:
            raise rate_limited(f"user {user.user_id!r} holds every live socket allowed", wait)
        raise rate_limited("too many upgrades without a token from this address", wait)
    return admission


async def read_body(request: web.Request) -> bytes:
    """The request's body, read under the node's cap on bodies being read at
    once: each reserves its ``Content-Length`` (the body limit when it has
    none) while it is read; past the cap, 503 ``unavailable`` before a byte
    of it is read."""
    limit = request.app[SETTINGS].max_body_bytes
    size = min(request.content_length or limit, limit)
    bodies = request.app[BUDGETS].bodies
    if not bodies.reserve(size):
        raise ApiError(
            "unavailable",
            f"the node is reading {bodies.reserved} bytes of request bodies; try again",
            retry_after=BODIES_RETRY,
        )
    try:
        return await request.read()
    except web.RequestPayloadError as e:
        # The body does not decode as its headers say (a corrupt gzip or
        # deflate body, a malformed chunk): the client's mistake.
        raise ApiError("invalid_body", f"the body could not be read: {e}") from e
    finally:
        bodies.release(size)
