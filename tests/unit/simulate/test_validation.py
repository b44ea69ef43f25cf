"""The simulator against queueing theory: cases with a known answer, seeded and fast.

Each case runs the production policy (`Pool.select` over the real policy object) through the
simulator and compares one number with its closed form:

- M/M/c (one server serving c at once, Poisson arrivals, exponential service): the mean wait
  in queue and the probability of waiting, by Erlang's C formula. Tolerance: 8% on the mean
  wait (it converges slowly: over seeds 1-8 the error stayed under 5%), 3% on the probability.
- `random` over n single-slot servers splits Poisson arrivals into n independent M/M/1
  queues: mean wait rho / (mu - lambda/n). Tolerance 5%.
- `round_robin` gives each server every n-th arrival: Erlang-n interarrival times, an E_n/M/1
  queue, whose mean wait is sigma / (mu (1 - sigma)) with sigma the root of
  sigma = (lambda / (lambda + mu (1 - sigma)))^n (the GI/M/1 result). Tolerance 5%.
- Balls into bins (Azar et al., Mitzenmacher): n requests that never finish over n servers.
  The fraction of servers holding at least i of them tends to the solution of
  ds_i/dt = s_{i-1}^d - s_i^d at t = 1: d = 1 for `random` (a Poisson(1) tail), d = 2 for
  `p2c_ewma`, which with no latency sample yet compares in-flight counts: two choices.
  Tolerance 0.01 absolute per fraction (about 4.5 standard errors at n = 10,000).
"""

from __future__ import annotations

import math
from collections import Counter
from statistics import fmean

import pytest

from portico.config.schema import PoolConfig
from portico.simulate import Trace, WorkloadSpec, simulate, synthetic
from portico.simulate.spec import Arrivals, ServerModel, TimeDistribution

SEED = 3
REQUESTS = 200_000
MU = 1.0  # service rate per slot: mean service time 1 s of simulated time


def pool(n: int, policy: str) -> PoolConfig:
    servers = [{"address": f"10.0.{i // 250}.{i % 250 + 1}:80", "name": f"s{i}"} for i in range(n)]
    return PoolConfig.model_validate({"policy": policy, "servers": servers})


def poisson(rate: float, requests: int = REQUESTS, mean: float = 1 / MU, **shape: str) -> Trace:
    return synthetic(
        Arrivals(requests=requests, rate=rate, service=TimeDistribution(mean=mean, **shape)),
        SEED,
    )


def capacity(slots: int) -> WorkloadSpec:
    return WorkloadSpec(seed=SEED, default_server=ServerModel(capacity=slots))


def erlang_c(c: int, a: float) -> float:
    """The probability that an arrival waits in an M/M/c queue with offered load a < c."""
    below = sum(a**k / math.factorial(k) for k in range(c))
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (below + top)


def test_one_server_with_c_slots_waits_as_erlang_c_says() -> None:
    c, rho = 4, 0.6
    rate = rho * c * MU
    run = simulate(pool(1, "round_robin"), "app", "round_robin", poisson(rate), capacity(c))
    waiting = erlang_c(c, rate / MU)
    mean_wait = waiting / (c * MU - rate)
    assert fmean(run.wait) == pytest.approx(mean_wait, rel=0.08)
    assert sum(1 for w in run.wait if w > 0) / len(run.wait) == pytest.approx(waiting, rel=0.03)


def test_random_over_single_slot_servers_is_n_mm1_queues() -> None:
    n, rho = 4, 0.6
    run = simulate(pool(n, "random"), "app", "random", poisson(rho * n * MU), capacity(1))
    assert fmean(run.wait) == pytest.approx(rho / (MU - rho * MU), rel=0.05)


def test_round_robin_over_single_slot_servers_is_an_erlang_arrival_queue() -> None:
    n, rho = 4, 0.6
    rate = rho * n * MU
    run = simulate(pool(n, "round_robin"), "app", "round_robin", poisson(rate), capacity(1))
    sigma = 0.5
    for _ in range(1000):  # a contraction on (0, 1): converges to the GI/M/1 root
        sigma = (rate / (rate + MU * (1 - sigma))) ** n
    assert fmean(run.wait) == pytest.approx(sigma / (MU * (1 - sigma)), rel=0.05)
    # and rotation waits less than chance does, as the theory says (0.67 s against 1.5 s)
    assert fmean(run.wait) < 0.5 * rho / (MU - rho * MU)


def fluid_limit(d: int, levels: int) -> list[float]:
    """s_i, the fraction of bins with at least i balls once n balls went into n bins by
    d-choice, as n grows (Euler steps of the differential equations; s_0 = 1)."""
    s = [1.0] + [0.0] * levels
    steps = 20_000
    for _ in range(steps):
        s = [1.0] + [s[i] + (s[i - 1] ** d - s[i] ** d) / steps for i in range(1, levels + 1)]
    return s


@pytest.mark.parametrize(("policy", "choices"), [("random", 1), ("p2c_ewma", 2)])
def test_requests_that_never_end_spread_as_balls_into_bins(policy: str, choices: int) -> None:
    n = 10_000
    never = poisson(1000.0, requests=n, mean=1e9, distribution="constant")
    run = simulate(pool(n, policy), "app", policy, never, capacity(1))
    loads = Counter(run.server)
    assert sum(loads.values()) == n
    at_least = [sum(1 for s in range(n) if loads.get(s, 0) >= i) / n for i in range(5)]
    expected = fluid_limit(choices, 4)
    for i in range(1, 5):
        assert at_least[i] == pytest.approx(expected[i], abs=0.01), (i, at_least, expected)
    most = max(loads.values())
    if choices == 2:
        assert most <= 4  # ln ln n / ln 2 + O(1): the exponential improvement of two choices
    else:
        assert most >= 6  # about ln n / ln ln n
