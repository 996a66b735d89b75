"""Hostile and careless clients, all at once, for a while.

Bodies nested hundreds of levels deep, integers beyond 64 bits, numbers that
overflow, bytes that are not UTF-8 (in bodies and in headers), bodies over
the size limit, tokenless socket floods, and sockets that stop reading while
large messages are posted to their session. Each request or frame sent is a
bad input tried; the honest writers running beside them (faults/load.py)
must not notice.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time
from urllib.parse import urlsplit

import aiohttp

from faults.load import token

DEEP = b'{"role": "user", "content": "x", "metadata": ' + b'{"a": ' * 300 + b"1" + b"}" * 300 + b"}"
BODIES = [
    DEEP,
    b'{"role": "user", "content": "x", "tokens": 1180591620717411303424}',
    b'{"role": "user", "content": "x", "metadata": {"n": 1e999}}',
    b'{"role": "user", "content": "\xff\xfe not utf-8"}',
    b'{"role": "user", "content": "x", "unknown": true}',
    b"[" * 4000 + b"]" * 4000,
    b"not json at all",
]


async def _raw(base: str, head: bytes, *, read: bool = True) -> asyncio.StreamWriter | None:
    """Send raw request bytes; read the answer's start unless told not to
    (then the open connection is returned, never read again)."""
    parts = urlsplit(base)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(head)
    await writer.drain()
    if not read:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        return writer
    with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
        await asyncio.wait_for(reader.read(200), 5)
    writer.close()
    return None


def _upgrade(path: str, headers: bytes = b"") -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
        + key
        + b"\r\n"
        + headers
        + b"\r\n"
    )


async def _bodies(base: str, until: float) -> int:
    sent = 0
    headers = {"Authorization": f"Bearer {token('mallory')}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http:
        await http.post(f"{base}/v1/sessions", json={"session_id": "mallory-s"}, headers=headers)
        while time.monotonic() < until:
            for body in BODIES:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.post(
                        f"{base}/v1/sessions/mallory-s/messages", data=body, headers=headers
                    ) as r:
                        await r.read()
                sent += 1
            with contextlib.suppress(aiohttp.ClientError):
                async with http.post(
                    f"{base}/v1/sessions/mallory-s/messages",
                    data=b'{"content": "' + b"x" * (2 << 20) + b'"}',
                    headers=headers,
                ) as r:
                    await r.read()
            sent += 1
            await asyncio.sleep(0.05)
    return sent


async def _headers(base: str, until: float) -> int:
    sent = 0
    while time.monotonic() < until:
        with contextlib.suppress(OSError):
            await _raw(
                base,
                b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                b"Authorization: Bearer abc\xff\xfedef\r\n\r\n",
            )
            await _raw(base, _upgrade("/v1/ws?session_id=s-bytes", b"Authorization: \xff\r\n"))
            await _raw(base, b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        sent += 3
        await asyncio.sleep(0.05)
    return sent


async def _tokenless_flood(base: str, until: float) -> int:
    """Sockets that upgrade and never authenticate, as fast as they go."""
    sent = 0
    while time.monotonic() < until:
        with contextlib.suppress(OSError):
            await _raw(base, _upgrade(f"/v1/ws?session_id=flood-{sent % 50}"))
        sent += 1
    return sent


async def _non_readers(base: str, until: float, sockets: int = 4) -> int:
    """Live sockets that stop reading while large messages go to their session."""
    held: list[asyncio.StreamWriter] = []
    sent = 0
    headers = {"Authorization": f"Bearer {token('sink-owner')}"}
    async with aiohttp.ClientSession() as http:
        await http.post(f"{base}/v1/sessions", json={"session_id": "sink"}, headers=headers)
        for i in range(sockets):
            with contextlib.suppress(OSError):
                writer = await _raw(
                    base,
                    _upgrade(
                        f"/v1/ws?session_id=sink&connection_id=sink-{os.getpid()}-{i}",
                        f"Authorization: Bearer {token('sink-owner')}\r\n".encode(),
                    ),
                    read=False,
                )
                if writer is not None:
                    held.append(writer)
            sent += 1
        big = {"role": "user", "content": "y" * 200_000}
        while time.monotonic() < until:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.post(
                    f"{base}/v1/sessions/sink/messages", json=big, headers=headers
                ) as r:
                    await r.read()
            sent += 1
    for writer in held:
        writer.close()
    return sent


async def hostile_mix(base: str, seconds: float) -> int:
    """Every kind of hostile client at once for ``seconds``; how many bad
    inputs were sent."""
    until = time.monotonic() + seconds
    counts = await asyncio.gather(
        _bodies(base, until),
        _headers(base, until),
        _tokenless_flood(base, until),
        _non_readers(base, until),
    )
    return sum(counts)
