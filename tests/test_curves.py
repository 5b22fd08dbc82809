"""Equal-answer comparison maths (reidloop/metrics/curves.py) on hand-computed curves."""
import pytest

from reidloop.metrics.curves import answers_to_reach, gap_closure, held_to_budget, mean_up_to, value_at

# a run: 0 answers -> 0.30 mAP, 100 -> 0.50, 300 -> 0.60
X, Y = [0, 100, 300], [0.30, 0.50, 0.60]


def test_gap_closure():
    assert gap_closure(0.30, 0.30, 0.70) == 0.0
    assert gap_closure(0.70, 0.30, 0.70) == 1.0
    assert gap_closure(0.40, 0.30, 0.70) == pytest.approx(0.25)
    assert gap_closure(0.20, 0.30, 0.70) == pytest.approx(-0.25)  # worse than the Baseline: negative
    with pytest.raises(ValueError, match="UpperBound > Baseline"):
        gap_closure(0.5, 0.4, 0.4)


def test_value_at_interpolates_between_rounds_and_never_extrapolates():
    assert value_at(X, Y, 0) == pytest.approx(0.30)
    assert value_at(X, Y, 50) == pytest.approx(0.40)
    assert value_at(X, Y, 100) == pytest.approx(0.50)
    assert value_at(X, Y, 200) == pytest.approx(0.55)
    assert value_at(X, Y, 300) == pytest.approx(0.60)
    assert value_at(X, Y, 301) is None
    # a round that asked nothing repeats an answer count: the later point counts
    assert value_at([0, 100, 100, 200], [0.3, 0.4, 0.45, 0.5], 100) == pytest.approx(0.45)


def test_mean_up_to_is_the_area_under_the_curve_per_answer():
    # trapezoids: 0-100: 100 * (0.30 + 0.50) / 2 = 40; 100-300: 200 * (0.50 + 0.60) / 2 = 110 -> 150 / 300
    assert mean_up_to(X, Y, 300) == pytest.approx(0.5)
    # up to 200: 40 + 100 * (0.50 + 0.55) / 2 = 92.5 -> 92.5 / 200
    assert mean_up_to(X, Y, 200) == pytest.approx(0.4625)
    assert mean_up_to(X, Y, 400) is None  # the run stopped at 300
    # a round that asked nothing at the end (same answer count twice): the area ends at the first of them
    assert mean_up_to([0, 100, 100], [0.3, 0.5, 0.7], 100) == pytest.approx(0.4)
    # reaching the same final value earlier scores higher
    assert mean_up_to([0, 100, 300], [0.3, 0.6, 0.6], 300) > mean_up_to(X, Y, 300)


def test_answers_to_reach():
    assert answers_to_reach(X, Y, 0.30) == 0
    assert answers_to_reach(X, Y, 0.40) == pytest.approx(50)
    assert answers_to_reach(X, Y, 0.55) == pytest.approx(200)
    assert answers_to_reach(X, Y, 0.61) is None
    # the first crossing counts, even if the curve falls again later
    assert answers_to_reach([0, 100, 200], [0.3, 0.7, 0.5], 0.5) == pytest.approx(50)


def test_bad_curves_are_refused():
    with pytest.raises(ValueError, match="must not decrease"):
        value_at([0, 200, 100], [0.1, 0.2, 0.3], 50)
    with pytest.raises(ValueError, match="as many answers as values"):
        value_at([0, 100], [0.1], 50)


def test_a_run_that_ended_with_budget_left_holds_its_last_value_up_to_the_budget():
    # every query browsed after 298 answers of a 300 budget (inference settled 2 pairs): 300 buys 0.60
    x, y = held_to_budget([0, 100, 298], [0.30, 0.50, 0.60], 300)
    assert (x, y) == ([0, 100, 298, 300], [0.30, 0.50, 0.60, 0.60])
    assert value_at(x, y, 300) == pytest.approx(0.60)
    assert value_at(x, y, 299) == pytest.approx(0.60)
    assert value_at(x, y, 301) is None  # never beyond its budget
    assert value_at(x, y, 199) == pytest.approx(0.55)  # the measured part is unchanged
    # area to the budget: 40 + 198 * (0.50 + 0.60) / 2 + 2 * 0.60 = 40 + 108.9 + 1.2 = 150.1 -> / 300
    assert mean_up_to(x, y, 300) == pytest.approx(150.1 / 300)
    # a run that spent its budget is left as it is
    assert held_to_budget(X, Y, 300) == (X, Y)
