from __future__ import annotations

import itertools
import math

import pytest

from portico.health import SLOW_START_FLOOR, HealthState, slow_start_factor


def feed(state: HealthState, results: str) -> str:
    """Feed "+" (success) / "-" (failure) results; return "!" where the state flipped."""
    return "".join("!" if state.observe(r == "+") else "." for r in results)


# HealthState


def test_health_state_starts_up_with_no_streak_by_default() -> None:
    state = HealthState(rise=2, fall=3)
    assert state.up
    assert state.streak == 0


def test_health_state_can_start_down() -> None:
    assert not HealthState(rise=2, fall=3, initially_up=False).up


def test_up_server_goes_down_after_fall_failures_in_a_row() -> None:
    state = HealthState(rise=2, fall=3)
    assert feed(state, "--") == ".."
    assert state.up
    assert feed(state, "-") == "!"
    assert not state.up


def test_down_server_comes_up_after_rise_successes_in_a_row() -> None:
    state = HealthState(rise=2, fall=3, initially_up=False)
    assert feed(state, "+") == "."
    assert not state.up
    assert feed(state, "+") == "!"
    assert state.up


def test_observe_reports_only_the_result_that_flips_the_state() -> None:
    state = HealthState(rise=2, fall=3)
    assert feed(state, "+++---+++---") == ".....!.!...!"
    assert not state.up


def test_a_success_resets_the_failure_streak() -> None:
    state = HealthState(rise=2, fall=3)
    assert feed(state, "--+--") == "....."
    assert state.up
    assert state.streak == 2
    assert feed(state, "-") == "!"


def test_a_failure_resets_the_success_streak() -> None:
    state = HealthState(rise=3, fall=1, initially_up=False)
    assert feed(state, "++-++") == "....."
    assert not state.up
    assert feed(state, "+") == "!"


def test_alternating_results_never_change_the_state() -> None:
    up = HealthState(rise=2, fall=2)
    down = HealthState(rise=2, fall=2, initially_up=False)
    assert feed(up, "-+" * 50) == "." * 100
    assert feed(down, "+-" * 50) == "." * 100
    assert up.up
    assert not down.up


def test_results_that_agree_with_the_state_change_nothing() -> None:
    up = HealthState(rise=2, fall=2)
    down = HealthState(rise=2, fall=2, initially_up=False)
    assert feed(up, "+" * 10) == "." * 10
    assert feed(down, "-" * 10) == "." * 10
    assert (up.up, up.streak, down.up, down.streak) == (True, 0, False, 0)


def test_streak_counts_results_against_the_current_state() -> None:
    state = HealthState(rise=3, fall=3)
    streaks = []
    for result in "--+---+++":
        state.observe(result == "+")
        streaks.append((state.up, state.streak))
    assert streaks == [
        (True, 1),
        (True, 2),
        (True, 0),  # a success while up breaks the run of failures
        (True, 1),
        (True, 2),
        (False, 0),  # flipped: the run starts over
        (False, 1),
        (False, 2),
        (True, 0),
    ]


def test_rise_and_fall_of_one_flip_on_every_disagreeing_result() -> None:
    state = HealthState(rise=1, fall=1)
    assert feed(state, "-+-++--") == "!!!!.!."


def test_health_state_repr_reads_like_haproxy() -> None:
    state = HealthState(rise=2, fall=3)
    state.observe(False)
    assert repr(state) == "<HealthState UP 1/3>"
    state.observe(False)
    state.observe(False)
    state.observe(True)
    assert repr(state) == "<HealthState DOWN 1/2>"


@pytest.mark.parametrize(
    ("rise", "fall", "name"), [(0, 1, "rise"), (1, 0, "fall"), (-1, 3, "rise")]
)
def test_health_state_rejects_rise_or_fall_below_one(rise: int, fall: int, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        HealthState(rise=rise, fall=fall)


# slow_start_factor


def test_slow_start_gives_a_full_share_when_not_ramping() -> None:
    assert slow_start_factor(None, now=5.0, window=30.0) == 1.0


@pytest.mark.parametrize("window", [0.0, -1.0, math.nan])
def test_slow_start_gives_a_full_share_when_disabled(window: float) -> None:
    assert slow_start_factor(100.0, now=100.0, window=window) == 1.0


def test_slow_start_begins_at_the_floor() -> None:
    assert slow_start_factor(100.0, now=100.0, window=30.0) == SLOW_START_FLOOR == 0.1


def test_slow_start_ramps_linearly_from_the_floor_to_a_full_share() -> None:
    assert slow_start_factor(100.0, now=115.0, window=30.0) == pytest.approx(0.55)
    assert slow_start_factor(100.0, now=107.5, window=30.0) == pytest.approx(0.325)
    shares = [slow_start_factor(0.0, now=t / 10, window=10.0) for t in range(101)]
    steps = [b - a for a, b in itertools.pairwise(shares)]
    assert all(step == pytest.approx(0.009) for step in steps)


@pytest.mark.parametrize("after", [0.0, 0.001, 1000.0])
def test_slow_start_gives_a_full_share_from_the_end_of_the_window(after: float) -> None:
    assert slow_start_factor(100.0, now=130.0 + after, window=30.0) == 1.0


def test_slow_start_gives_the_floor_for_a_clock_read_before_the_server_came_back() -> None:
    assert slow_start_factor(100.0, now=99.0, window=30.0) == SLOW_START_FLOOR
