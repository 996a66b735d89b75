"""How cost grows: a least-squares line through each measured curve, its
shape, where it bends for the worse, the Markdown and the plot.

Everything said about a curve is computed here from its points; nothing is
written in by hand, so a new run on another machine says what that machine
does.

A curve is a *cost* (higher is worse: time, memory) or a *rate* (lower is
worse: operations per second) against a load. Its shape is:

- ``flat``: the fitted line moves less than ``FLAT`` of the curve's mean
  across the loads measured;
- ``linear``: otherwise, when the last point is where the line through the
  earlier points puts it, give or take ``MARGIN``;
- ``worse``: a cost whose last point lies more than ``MARGIN`` above the line
  through the earlier ones, and above the earlier points by as much (its last
  step's marginal cost exceeds the earlier fit's slope by that much), or a
  rate whose last point fell more than ``MARGIN`` below the best of the
  earlier ones; the curve bends for the worse after the last-but-one load;
- ``levels off``: a cost whose last point lies more than ``MARGIN`` below that
  line (it grows slower than it did), or a rate that stopped rising (above
  its earlier best, but more than ``MARGIN`` under the rising line of the
  earlier points: a server at capacity);
- ``falls``: a cost that is not flat and whose fitted line slopes down (a
  fixed cost paid once, spread over more load).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.report import SCALING_HEADING

FLAT = 0.10
MARGIN = 0.25


@dataclass(frozen=True)
class Line:
    intercept: float
    slope: float

    def at(self, x: float) -> float:
        return self.intercept + self.slope * x


def least_squares(xs: list[float], ys: list[float]) -> Line:
    """The ordinary least-squares line through the points (at least two, of
    at least two distinct loads)."""
    if len(xs) != len(ys) or len(set(xs)) < 2:
        raise ValueError("a line needs points at two loads at least")
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    return Line(my - slope * mx, slope)


@dataclass(frozen=True)
class Curve:
    """One measured curve and how to state its slope.

    ``per`` and ``unit`` say the slope in a reader's units: the slope (y per
    unit of x) times ``per`` is ``unit``, e.g. seconds per event times 1e6 is
    "s per million events"."""

    title: str
    x_label: str
    y_label: str
    points: list[tuple[float, float]]
    cost: bool  # True: higher is worse (time, memory); False: a rate
    per: float
    unit: str
    note: str = ""  # what the slope means for sizing a node


@dataclass(frozen=True)
class Shape:
    kind: str  # "flat", "linear", "worse", "levels off", "falls"
    fit: Line  # through every point
    slope: float  # fit.slope in the curve's unit
    before: Line | None  # through every point but the last
    marginal: float | None  # the last step's slope, in the curve's unit
    expected: float | None  # where the earlier line puts the last point
    bend: float | None  # the load after which the curve is worse

    def says(self, curve: Curve) -> str:
        """The shape in words, with the numbers it rests on."""
        fitted = f"{fmt(self.slope)} {curve.unit}"
        if self.kind == "flat":
            return f"flat (fitted slope {fitted})"
        if self.kind == "linear":
            return f"linear, {fitted}"
        if self.kind == "falls":
            return f"falls as the load grows (fitted slope {fitted})"
        assert self.marginal is not None and self.expected is not None
        last_x, last_y = curve.points[-1]
        earlier = "" if self.before is None else f"{fmt(self.before.slope * curve.per)} "
        if self.kind == "worse":
            if curve.cost:
                return (
                    f"WORSE after {fmt(self.bend)}: the step to {fmt(last_x)} cost "
                    f"{fmt(self.marginal)} {curve.unit} against {earlier}{curve.unit} before "
                    f"it ({fmt(last_y)} measured, at most {fmt(self.expected)} expected from "
                    "the earlier points); "
                    f"fitted over all, {fitted}"
                )
            return (
                f"WORSE after {fmt(self.bend)}: {fmt(last_y)} at {fmt(last_x)}, more than "
                f"{MARGIN:.0%} under the best earlier point; fitted, {fitted}"
            )
        if curve.cost:
            return (
                f"levels off: the step to {fmt(last_x)} cost {fmt(self.marginal)} {curve.unit} "
                f"against {earlier}{curve.unit} before it; fitted over all, {fitted}"
            )
        return (
            f"levels off (at capacity): {fmt(last_y)} at {fmt(last_x)} against "
            f"{fmt(self.expected)} on the line of the earlier points; fitted, {fitted}"
        )


def assess(curve: Curve) -> Shape:
    xs = [float(x) for x, _ in curve.points]
    ys = [float(y) for _, y in curve.points]
    fit = least_squares(xs, ys)
    slope = fit.slope * curve.per
    mean = sum(abs(y) for y in ys) / len(ys)
    flat = abs(fit.slope) * (max(xs) - min(xs)) <= FLAT * mean
    if len(xs) < 3:
        return Shape("flat" if flat else "linear", fit, slope, None, None, None, None)
    before = least_squares(xs[:-1], ys[:-1])
    expected = before.at(xs[-1])
    if curve.cost:
        # A cost is not expected to fall with load: an earlier line sloping
        # down is noise, and the last point is judged against the earlier ones.
        expected = max(expected, *ys[:-1])
    marginal = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]) * curve.per
    kind = "flat" if flat else "linear"
    rising = before.slope > 0 and not flat
    if curve.cost:
        if ys[-1] > expected + MARGIN * abs(expected):
            kind = "worse"
        elif ys[-1] < expected - MARGIN * abs(expected) and rising:
            kind = "levels off"
        elif fit.slope < 0 and not flat:
            kind = "falls"
    elif ys[-1] < (1 - MARGIN) * max(ys[:-1]):
        kind = "worse"
    elif ys[-1] < expected - MARGIN * abs(expected) and rising:
        kind = "levels off"
    bend = xs[-2] if kind == "worse" else None
    return Shape(kind, fit, slope, before, marginal, expected, bend)


def fmt(value: float | None) -> str:
    """A number as a reader wants it: three significant figures, thousands
    separated."""
    if value is None:
        return "?"
    if float(value).is_integer() and abs(value) >= 1:
        return f"{value:,.0f}"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def section(curves: list[Curve], picture: str, notes: list[str] | None = None) -> str:
    """The report's "How cost grows" section: a table of the curves, what each
    means for sizing a node, and the plot."""
    lines = [
        SCALING_HEADING,
        "",
        "Each curve is sessiond alone at growing loads. The line is a least-squares fit "
        "through every point; the shape compares the last point with the line through the "
        f'earlier ones ("worse" when it lies more than {MARGIN:.0%} beyond it: the last '
        'step\'s marginal cost exceeds the fit; "flat" when the fitted line moves less than '
        f"{FLAT:.0%} of the mean across the loads). All of it is computed by "
        "`bench/curves.py` from the numbers below.",
        "",
        "| curve | loads | measured | shape | fit |",
        "| --- | --- | --- | --- | --- |",
    ]
    for curve in curves:
        shape = assess(curve)
        loads = ", ".join(fmt(x) for x, _ in curve.points)
        measured = ", ".join(fmt(y) for _, y in curve.points)
        fit = f"{fmt(shape.fit.intercept)} + {fmt(shape.slope)} {curve.unit}"
        lines.append(
            f"| {curve.title} | {curve.x_label}: {loads} | {curve.y_label}: {measured} "
            f"| {shape.says(curve)} | {fit} |"
        )
    lines.append("")
    for curve in curves:
        if curve.note:
            shape = assess(curve)
            lines.append(f"- {curve.title}: {curve.note.format(slope=fmt(shape.slope))}")
    lines.extend(f"- {note}" for note in notes or [])
    worse = [c.title for c in curves if assess(c).kind == "worse"]
    lines.append(
        "- Bends for the worse: " + ("; ".join(worse) if worse else "none at these loads") + "."
    )
    lines.extend(["", picture, ""])
    return "\n".join(lines)


def plot(png: Path, curves: list[Curve]) -> str:
    """Every curve in a panel of its own, points and fitted line (a straight
    line drawn on a log scale of loads, so it curves), ticks at the loads
    measured; the Markdown that shows it, or a note saying why there is none."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "(no plot: install the bench extra, `pip install -e '.[bench]'`)"
    columns = 3
    rows = (len(curves) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for ax, curve in zip(axes.flat, curves, strict=False):
        xs = [x for x, _ in curve.points]
        ys = [y for _, y in curve.points]
        shape = assess(curve)
        ax.plot(xs, ys, marker="o", label="measured")
        lo, hi = min(xs), max(xs)
        grid = [lo * (hi / lo) ** (i / 50) for i in range(51)] if lo > 0 else [lo, hi]
        ax.plot(grid, [shape.fit.at(x) for x in grid], linestyle="--", alpha=0.6,
                label=f"fit: {fmt(shape.slope)} {curve.unit}")  # fmt: skip
        if lo > 0:
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(xs, [fmt(x) for x in xs])
        ax.set(xlabel=curve.x_label, ylabel=curve.y_label, title=f"{curve.title} ({shape.kind})")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(curves) :]:
        ax.set_visible(False)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return f"![how cost grows: each curve against its load, with its fitted line]({png.name})"
