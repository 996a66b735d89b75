"""Traces only when asked: without an OTLP endpoint nothing of opentelemetry
is even imported; with a tracer, a request, a handshake's steps and a writer
commit are spans carrying their session and connection IDs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from service.runtime import tracing
from tests.e2e.wsclient import open_live

Serve = Callable[..., Any]

NOTHING_IMPORTED = """
import sys
from service.edge.app import create_app
from service.runtime.settings import Settings
create_app(Settings(store_url="memory://", secret="s" * 32))
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
print(loaded)
"""


def test_without_an_endpoint_nothing_of_opentelemetry_is_imported() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", NOTHING_IMPORTED],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "[]", done.stdout
    assert tracing.from_env(env) is tracing.NOOP


def test_an_endpoint_and_the_extra_make_an_otlp_tracer() -> None:
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
    tracer = tracing.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    try:
        assert isinstance(tracer, tracing.OtelTracer) and tracer.enabled
    finally:
        tracer.shutdown()
    disabled = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"}
    assert tracing.from_env(disabled) is tracing.NOOP


async def test_a_request_a_handshake_and_a_commit_are_spans_with_their_ids(
    sqlite_url: str, serve: Serve
) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    api = await serve(sqlite_url, tracer=tracing.OtelTracer(provider))

    status, _ = await api.call(
        "POST", "/v1/sessions/s-traced/messages", json={"role": "user", "content": "hi"}
    )
    assert status == 404  # no such session yet: still a span, with its status
    status, _ = await api.call("POST", "/v1/sessions", json={"session_id": "s-traced"})
    assert status == 201
    status, _ = await api.call(
        "POST", "/v1/sessions/s-traced/messages", json={"role": "user", "content": "hi"}
    )
    assert status == 201
    client = await open_live(api, "s-traced", connection_id="c-traced")
    await client.close(1000)
    await api.server.close()  # every span of the socket has ended

    spans = exporter.get_finished_spans()
    by_name: dict[str, list[Any]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)

    # One request: a server span named by its route, with its IDs and status.
    refused, posted = by_name["POST /v1/sessions/{session_id}/messages"]
    assert posted.kind == SpanKind.SERVER
    assert posted.attributes["http.route"] == "/v1/sessions/{session_id}/messages"
    assert posted.attributes["http.request.method"] == "POST"
    assert posted.attributes["http.response.status_code"] == 201
    assert posted.attributes["sessiond.session_id"] == "s-traced"
    assert posted.attributes["sessiond.user"] == "alice"
    assert refused.attributes["http.response.status_code"] == 404

    # One handshake: each step recorded is a span inside the upgrade's.
    [upgrade] = by_name["GET /v1/ws"]
    assert upgrade.attributes["http.response.status_code"] == 101
    assert upgrade.attributes["sessiond.connection_id"] == "c-traced"
    assert upgrade.attributes["sessiond.user"] == "alice"
    steps = [s for s in spans if s.name.startswith("ws ")]
    assert [s.name for s in steps][:2] == ["ws open_connection", "ws accept"]
    assert "ws close_connection" in {s.name for s in steps}
    for step in steps:
        assert step.attributes["sessiond.connection_id"] == "c-traced"
        assert step.attributes["sessiond.session_id"] == "s-traced"
        assert step.context.trace_id == upgrade.context.trace_id
        assert step.parent is not None and step.parent.span_id == upgrade.context.span_id
    live = [s for s in steps if s.attributes.get("sessiond.state") == "PROCESSING_READY"]
    assert live and live[0].attributes["sessiond.user"] == "alice"
    assert live[0].attributes["sessiond.outcome"] == "recorded"

    # One commit: a trace of its own (the writer's thread has no request),
    # linked to the spans it served, naming what it wrote.
    commits = by_name["writer commit"]
    message_commit = next(
        c
        for c in commits
        if any(link.context.span_id == posted.context.span_id for link in c.links)
    )
    assert message_commit.parent is None
    assert message_commit.attributes["sessiond.session_ids"] == ("s-traced",)
    assert message_commit.attributes["sessiond.command_names"] == ("record_message",)
    assert message_commit.attributes["sessiond.events"] >= 1
    connection_commits = [
        c for c in commits if "c-traced" in c.attributes["sessiond.connection_ids"]
    ]
    assert len(connection_commits) >= 4  # CONNECTING ... PROCESSING_READY, CLOSED
    linked = {link.context.span_id for c in connection_commits for link in c.links}
    assert {s.context.span_id for s in steps} & linked
