"""The up/down verdict of one server from active checks, and its ramp-up after coming back. *pure*

Owns `HealthState` (HAProxy's rise/fall state machine, fed one probe result at a time) and
`slow_start_factor` (the share of its normal traffic a server gets while ramping up). Never
probes, never schedules checks and never tells anyone about a change: the checker does the I/O
and acts on what `observe` returns. Never reads the clock: `now` and `since` are arguments, in
seconds on any monotonic scale.
"""

from __future__ import annotations

__all__ = ["SLOW_START_FLOOR", "HealthState", "slow_start_factor"]

# Share of its traffic a server gets at the first instant of slow start. Not 0.0: a server
# that got nothing at first would send no responses to confirm it works (and a hash policy
# would move none of its keys back), and Envoy's slow start uses the same 10% floor by default.
SLOW_START_FLOOR = 0.1


class HealthState:
    """Rise/fall hysteresis over probe results: one bad probe does not take a server out.

    An up server goes down after `fall` failures in a row; a down server comes back after
    `rise` successes in a row. A result that agrees with the current state breaks the run, so
    alternating results never change the state (HAProxy's `rise`/`fall`, with runs counted
    strictly in a row).
    """

    __slots__ = ("_streak", "_up", "fall", "rise")

    def __init__(self, rise: int, fall: int, initially_up: bool = True) -> None:
        if rise < 1:
            raise ValueError(f"rise must be >= 1, got {rise!r}")
        if fall < 1:
            raise ValueError(f"fall must be >= 1, got {fall!r}")
        self.rise = rise
        self.fall = fall
        self._up = initially_up
        self._streak = 0

    @property
    def up(self) -> bool:
        """True while the server is fit for traffic as far as active checks can tell."""
        return self._up

    @property
    def streak(self) -> int:
        """Results in a row that argue for a change: failures while up, successes while down.

        0 in the steady state; always below `fall` (while up) or `rise` (while down), since
        reaching it flips the state and starts over. The admin API shows it HAProxy-style as
        "UP 2/3" (going down) or "DOWN 1/2" (coming back).
        """
        return self._streak

    def observe(self, success: bool) -> bool:
        """Record one probe result; True when it flipped the state (read `up` for which way)."""
        up = self._up
        if success == up:
            self._streak = 0
            return False
        streak = self._streak + 1
        if streak < (self.fall if up else self.rise):
            self._streak = streak
            return False
        self._up = not up
        self._streak = 0
        return True

    def __repr__(self) -> str:
        state, limit = ("UP", self.fall) if self._up else ("DOWN", self.rise)
        return f"<HealthState {state} {self._streak}/{limit}>"


def slow_start_factor(since: float | None, now: float, window: float) -> float:
    """The share (0.1 to 1.0) of its normal traffic a server gets `now`, having come back at
    `since`.

    Linear from `SLOW_START_FLOOR` at `since` to 1.0 at `since + window`, so a server whose
    caches and connection pools are cold (or a JIT that has not warmed up) is not hit with a
    full share at once. 1.0 when there is no ramp: `since` is None (never went down, or the
    ramp already finished) or `window` is not positive (slow start disabled). A `now` before
    `since` (a clock read before the change was recorded) gets the floor.
    """
    if since is None or not window > 0:
        return 1.0
    elapsed = now - since
    if elapsed >= window:
        return 1.0
    if elapsed <= 0:
        return SLOW_START_FLOOR
    return SLOW_START_FLOOR + (1.0 - SLOW_START_FLOOR) * (elapsed / window)
