"""Traces, only when asked: with the ``otel`` extra installed and
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``)
set, each HTTP request, each command a socket records (its handshake's
steps) and each writer commit is an OpenTelemetry span sent over OTLP/HTTP.
Otherwise the tracer is :data:`NOOP`, whose spans cost one method call, and
nothing of opentelemetry is imported.

The rest of the service sees only :class:`Tracer`: ``span(name, attributes)``,
a context manager whose value has ``set_attribute``; ``link()`` (the current
span, to link a later span to) and ``shutdown()``. Attribute names:
``sessiond.session_id``, ``sessiond.connection_id``, ``sessiond.user`` (the
token's subject), and OpenTelemetry's own names for HTTP.

See docs/adr/0036-trace-with-opentelemetry-only-when-asked.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("sessiond")

SESSION = "sessiond.session_id"
CONNECTION = "sessiond.connection_id"
USER = "sessiond.user"

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

Kind = Literal["internal", "server"]
AttributeValue = str | bool | int | float | Sequence[str]


class NoopSpan:
    """What a span is when nothing is traced: takes attributes, keeps none."""

    __slots__ = ()

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        pass

    def __enter__(self) -> NoopSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


_NOOP_SPAN = NoopSpan()


class Tracer:
    """The tracer when nothing is traced (the default): every span is one
    shared object that does nothing."""

    enabled = False

    def span(
        self,
        name: str,
        attributes: Mapping[str, AttributeValue] | None = None,
        *,
        kind: Kind = "internal",
        root: bool = False,
        links: Sequence[Any] = (),
        carrier: Mapping[str, str] | None = None,
    ) -> AbstractContextManager[Any]:
        """A span around a ``with`` block. ``root``: a trace of its own, whatever
        span is current (the writer thread's commits); ``links``: what
        :meth:`link` returned, for the spans this one serves; ``carrier``: a
        request's headers, whose W3C ``traceparent`` is the parent."""
        return _NOOP_SPAN

    def link(self) -> Any:
        """The current span, as a link for a span that will serve it; None when
        nothing is traced."""
        return None

    def shutdown(self) -> None:
        """Send what is still buffered; the tracer traces nothing after."""


NOOP = Tracer()


class OtelTracer(Tracer):
    """Spans through an OpenTelemetry SDK ``TracerProvider`` (this app's own,
    never the process's global one, so two apps in one process keep their
    spans apart)."""

    enabled = True

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import context, propagate, trace

        self._provider = provider
        self._tracer = provider.get_tracer("sessiond")
        self._trace = trace
        self._context = context
        self._propagate = propagate
        self._kinds = {"internal": trace.SpanKind.INTERNAL, "server": trace.SpanKind.SERVER}

    def span(
        self,
        name: str,
        attributes: Mapping[str, AttributeValue] | None = None,
        *,
        kind: Kind = "internal",
        root: bool = False,
        links: Sequence[Any] = (),
        carrier: Mapping[str, str] | None = None,
    ) -> AbstractContextManager[Any]:
        if root:
            parent = self._context.Context()
        elif carrier is not None:
            parent = self._propagate.extract(carrier)
        else:
            parent = None
        return self._tracer.start_as_current_span(
            name,
            context=parent,
            kind=self._kinds[kind],
            attributes=attributes,
            links=[link for link in links if link is not None],
        )

    def link(self) -> Any:
        span_context = self._trace.get_current_span().get_span_context()
        if not span_context.is_valid:
            return None
        return self._trace.Link(span_context)

    def shutdown(self) -> None:
        self._provider.shutdown()


def from_env(env: Mapping[str, str] | None = None) -> Tracer:
    """An OTLP/HTTP tracer when an OTLP endpoint is set and the ``otel`` extra is
    installed (the exporter reads the ``OTEL_*`` variables itself: endpoint,
    headers, timeout; ``OTEL_SERVICE_NAME`` names the service, ``sessiond``
    by default); :data:`NOOP` otherwise, without importing opentelemetry."""
    env = os.environ if env is None else env
    if not any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES):
        return NOOP
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return NOOP
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as e:
        log.warning(
            "an OTLP endpoint is set but the otel extra is not installed: no traces",
            extra={"error": str(e)},
        )
        return NOOP
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or "sessiond"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return OtelTracer(provider)
