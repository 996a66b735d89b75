"""/metrics against hostile traffic: what Prometheus's own parser reads, with
a set of series no request, frame or token can grow (docs/PROTOCOL.md v1.1,
Operators; ADR 0025)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import jwt
from prometheus_client.parser import text_string_to_metric_families

from service.runtime.settings import Rate
from tests.conftest import TEST_SECRET, Api
from tests.e2e.wsclient import connect, eventually, open_live, refused_upgrade

Serve = Callable[..., Any]
Sample = tuple[str, tuple[tuple[str, str], ...]]  # a series: its name and labels
Samples = dict[Sample, float]

REFUSED_ATTACHES = 300
BAD_IDS = 20
HOSTILE_SUBS = ['eve"} 1\n# EOF', "mallory\nsessiond_fake_total 9", 'q"u"o\\t"e']


async def scrape(api: Api) -> Samples:
    """Every sample of /metrics, as Prometheus's parser reads it (it raises
    on a page it cannot read)."""
    async with api.http.get(api.url("/metrics")) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await r.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, f"{key} twice"
            samples[key] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def token_without_exp(user: str = "alice") -> str:
    return jwt.encode({"sub": user, "roles": ["user"]}, TEST_SECRET, algorithm="HS256")


async def refused_attach(api: Api, session_id: str) -> None:
    """bob's socket on alice's session: closed 4403 with the session ID in
    the recorded reason."""
    client = await connect(api, session_id, headers=api.auth("bob"))
    assert await client.until_closed() == 4403


async def test_hostile_traffic_leaves_metrics_parseable_with_the_same_series(
    sqlite_url: str, serve: Serve
) -> None:
    # Hundreds of sessions and of refused upgrades from one address (bob's
    # attaches to alice's sessions, hundreds in a few seconds) are the point
    # here, not a flood to stop: those budgets are lifted.
    api = await serve(
        sqlite_url,
        address_failed_upgrades=Rate(100_000, 60.0),
        user_sessions=Rate(100_000, 1.0),
        user_upgrades=Rate(100_000, 1.0),
    )
    before = await scrape(api)
    series_before = frozenset(before)

    # Real traffic: a socket walked to PROCESSING_READY, messages committed
    # and delivered to it.
    status, _ = await api.call("POST", "/v1/sessions", json={"session_id": "s-live"})
    assert status == 201
    live = await open_live(api, "s-live")
    for i in range(3):
        status, body = await api.call(
            "POST", "/v1/sessions/s-live/messages", json={"role": "user", "content": f"m{i}"}
        )
        assert status == 201, body
    await live.until(lambda f: f["type"] == "event" and f["event"]["data"].get("content") == "m2")

    # A token without exp: over HTTP, in the upgrade, in an auth frame.
    no_exp = {"Authorization": "Bearer " + token_without_exp()}
    status, _ = await api.call("GET", "/v1/sessions", user=None, headers=no_exp)
    assert status == 401
    client = await connect(api, "s-live", headers=no_exp)
    assert await client.until_closed() == 4401
    client = await connect(api, "s-live")
    await client.until_state("ACCEPTED")
    await client.send({"type": "auth", "token": token_without_exp()})
    assert await client.until_closed() == 4401

    # Quotes, backslashes and newlines in a token's subject.
    for n, sub in enumerate(HOSTILE_SUBS):
        hostile = {"Authorization": "Bearer " + api.signer.mint(sub)}
        await api.call("GET", "/v1/sessions", user=None, headers=hostile)
        await api.call("GET", "/v1/sessions/s-live", user=None, headers=hostile)
        client = await connect(api, f"s-hostile-{n}", headers=hostile)
        await client.until_state("PROCESSING_READY")
        await client.close()

    # Hundreds of refused attaches, each naming its own session.
    owned = [f"s-alices-{i:04d}" for i in range(REFUSED_ATTACHES)]
    for chunk in range(0, REFUSED_ATTACHES, 25):
        await asyncio.gather(
            *(
                api.call("POST", "/v1/sessions", json={"session_id": sid})
                for sid in owned[chunk : chunk + 25]
            )
        )
        await asyncio.gather(*(refused_attach(api, sid) for sid in owned[chunk : chunk + 25]))

    # Bad IDs and taken IDs before the upgrade.
    for i in range(BAD_IDS):
        status, _ = await refused_upgrade(api, api.ws_url(f"bad%22id{i}%0A"))
        assert status == 400
        status, _ = await refused_upgrade(
            api, api.ws_url("s-live", connection_id=f"conn-bad%22{i}")
        )
        assert status == 400
    status, _ = await refused_upgrade(api, api.ws_url("s-live", connection_id=live.connection_id))
    assert status == 409

    # Bad frames past the budget (the eleventh closes 4400), and a client's
    # own close code.
    spam = await open_live(api, "s-spam")
    await spam.send_raw('{"type": "nope\\"\\n", "ref": "r\\"1"}')
    await spam.send_raw("{not json")
    await spam.ws.send_bytes(b"\x00\x01")
    for i in range(8):
        await spam.send({"type": f'x"{i}\n'})
    assert await spam.until_closed() == 4400
    odd = await open_live(api, "s-odd")
    await odd.close(code=4321)

    # Unknown paths and methods.
    for path in ('/nope/"quoted"', "/v1/sessions/s-live/%0A/nope", "/v1/whatever?x=%22"):
        status, _ = await api.call("GET", path)
        assert status == 404
    status, _ = await api.call("PATCH", "/v1/sessions")
    assert status == 405

    closed = 2 + len(HOSTILE_SUBS) + REFUSED_ATTACHES + 2

    async def counted() -> Samples | None:
        now = await scrape(api)
        closes = sum(v for (name, _), v in now.items() if name == "sessiond_ws_closes_total")
        return now if closes == closed else None

    after = await eventually(counted, "the refused attaches and deliveries counted")
    await live.close()

    assert frozenset(after) == series_before
    assert len(after) == len(before)
    assert value(after, "sessiond_ws_closes_total", code="4401", reason="unauthenticated") == 2
    forbidden = value(after, "sessiond_ws_closes_total", code="4403", reason="forbidden")
    assert forbidden == REFUSED_ATTACHES
    assert value(after, "sessiond_ws_closes_total", code="4400", reason="protocol_error") == 1
    assert value(after, "sessiond_ws_closes_total", code="other", reason="client_closed") == 1
    assert value(after, "sessiond_http_errors_total", code="unauthenticated") >= 1
    bad_ids = sum(
        value(after, "sessiond_http_errors_total", code=code)
        for code in ("invalid_id", "invalid_query")
    )
    assert bad_ids == 2 * BAD_IDS
    assert value(after, "sessiond_http_errors_total", code="connection_id_taken") == 1
    assert value(after, "sessiond_http_errors_total", code="not_found") == 3
    assert value(after, "sessiond_http_errors_total", code="method_not_allowed") == 1
    assert value(after, "sessiond_ws_errors_total", code="unknown_type") == 9
    assert value(after, "sessiond_ws_errors_total", code="bad_frame") == 2
    for histogram in (
        "sessiond_ws_handshake_seconds",
        "sessiond_store_commit_seconds",
        "sessiond_store_commit_events",
        "sessiond_delivery_lag_seconds",
    ):
        assert value(after, f"{histogram}_count") > 0, histogram
        assert value(after, f"{histogram}_bucket", le="+Inf") == value(after, f"{histogram}_count")
    assert value(after, "sessiond_store_commit_seconds_count") == value(
        after, "sessiond_store_transactions_total"
    )
    assert value(after, "sessiond_store_commit_events_sum") == value(
        after, "sessiond_events_appended_total"
    )


async def test_two_apps_in_one_process_keep_their_own_metrics(
    sqlite_url: str, tmp_path: Any, serve: Serve
) -> None:
    first = await serve(sqlite_url)
    second = await serve(f"sqlite:///{tmp_path / 'second.db'}")
    status, _ = await first.call("GET", "/v1/sessions/s-none")
    assert status == 404
    one, two = await scrape(first), await scrape(second)
    assert value(one, "sessiond_http_errors_total", code="session_not_found") == 1
    assert value(two, "sessiond_http_errors_total", code="session_not_found") == 0
    assert value(one, "process_start_time_seconds") <= time.time()
    assert any(name.startswith("python_gc_") for name, _ in one)
