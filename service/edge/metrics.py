"""Prometheus text-format metrics, kept in-process (no client library)."""

from __future__ import annotations

from collections.abc import Callable


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    inner = ",".join(f'{k}="{v}"'.replace("\n", " ") for k, v in pairs)
    return "{" + inner + "}"


class Metrics:
    def __init__(self) -> None:
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.help: dict[str, tuple[str, str]] = {}
        self.kinds: dict[str, str] = {}
        self.gauges: dict[
            str, tuple[str, Callable[[], dict[tuple[tuple[str, str], ...], float]]]
        ] = {}

    def describe(self, name: str, kind: str, text: str) -> None:
        self.help[name] = (kind, text)

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        self.counters[key] = self.counters.get(key, 0.0) + amount

    def gauge(
        self,
        name: str,
        text: str,
        read: Callable[[], dict[tuple[tuple[str, str], ...], float]],
        kind: str = "gauge",
    ) -> None:
        """A metric read when scraped; ``kind`` "counter" for running totals."""
        self.gauges[name] = (text, read)
        self.kinds[name] = kind

    def render(self) -> str:
        lines: list[str] = []
        by_name: dict[str, list[tuple[tuple[tuple[str, str], ...], float]]] = {}
        for (name, labels), value in self.counters.items():
            by_name.setdefault(name, []).append((labels, value))
        for name in sorted(set(by_name) | {n for n in self.help if self.help[n][0] == "counter"}):
            kind, text = self.help.get(name, ("counter", name))
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")
            samples: list[tuple[tuple[tuple[str, str], ...], float]] = by_name.get(name) or [
                ((), 0.0)
            ]
            for labels, value in sorted(samples):
                lines.append(f"{name}{_labels(labels)} {value:g}")
        for name, (text, read) in sorted(self.gauges.items()):
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {self.kinds.get(name, 'gauge')}")
            for labels, value in sorted(read().items()):
                lines.append(f"{name}{_labels(labels)} {value:g}")
        return "\n".join(lines) + "\n"
