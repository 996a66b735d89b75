"""How the bench judges a curve (bench/curves.py): the fitted slope, and the
shape it reports, from the numbers alone."""

from __future__ import annotations

import pytest

from bench.curves import Curve, assess, least_squares, section


def cost(points: list[tuple[float, float]], per: float = 1.0) -> Curve:
    return Curve("t", "load", "cost", points, cost=True, per=per, unit="per unit")


def rate(points: list[tuple[float, float]]) -> Curve:
    return Curve("r", "load", "rate", points, cost=False, per=1.0, unit="per unit")


def test_least_squares_finds_the_line_through_exact_points() -> None:
    line = least_squares([1, 2, 3, 4], [5, 7, 9, 11])
    assert line.slope == pytest.approx(2.0)
    assert line.intercept == pytest.approx(3.0)


def test_least_squares_needs_two_distinct_loads() -> None:
    with pytest.raises(ValueError):
        least_squares([3, 3], [1, 2])


def test_a_straight_cost_is_linear_with_its_slope_in_the_readers_unit() -> None:
    shape = assess(cost([(100_000, 0.5), (1_000_000, 5.0), (3_000_000, 15.0)], per=1e6))
    assert shape.kind == "linear"
    assert shape.slope == pytest.approx(5.0)  # seconds per million events
    assert shape.bend is None


def test_a_cost_whose_last_step_costs_far_more_bends_for_the_worse_there() -> None:
    # 1 per unit up to 160, then 4 per unit from 160 to 640.
    shape = assess(cost([(10, 10), (40, 40), (160, 160), (640, 2080)]))
    assert shape.kind == "worse"
    assert shape.bend == 160
    assert shape.marginal == pytest.approx(4.0)
    assert "WORSE after 160" in shape.says(cost([(10, 10), (40, 40), (160, 160), (640, 2080)]))


def test_a_cost_within_the_margin_of_the_earlier_line_is_not_flagged() -> None:
    assert assess(cost([(10, 10), (40, 40), (160, 160), (640, 760)])).kind == "linear"


def test_a_flat_cost_with_noise_is_flat_not_worse() -> None:
    # The earlier points fall a little (noise); the last is within the margin of them.
    assert assess(cost([(1_000, 0.50), (10_000, 0.45), (100_000, 0.52)])).kind == "flat"


def test_a_rate_at_capacity_levels_off_and_one_that_falls_is_worse() -> None:
    assert assess(rate([(10, 300), (40, 600), (160, 640), (640, 650)])).kind == "levels off"
    falling = assess(rate([(10, 300), (40, 600), (160, 640), (640, 400)]))
    assert falling.kind == "worse"
    assert falling.bend == 160
    assert assess(rate([(1, 1000), (16, 1020), (256, 990)])).kind == "flat"


def test_the_section_names_the_curves_that_bend() -> None:
    text = section(
        [cost([(10, 10), (40, 40), (160, 160), (640, 2080)]), rate([(1, 1000), (16, 1020)])],
        "(plot)",
    )
    assert "## How cost grows" in text
    assert "Bends for the worse: t." in text
