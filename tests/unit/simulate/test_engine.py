"""The simulation around the production Pool: failures, retries, health, queues, shares."""

from __future__ import annotations

from typing import Any

from portico.config.schema import PoolConfig
from portico.simulate import Run, WorkloadSpec, simulate, summarize, synthetic
from portico.simulate.spec import Arrivals, Failure, ServerModel, TimeDistribution

SEED = 11


def pool(n: int = 3, **settings: Any) -> PoolConfig:
    servers = [
        {"address": f"10.0.0.{i + 1}:80", "name": f"s{i + 1}", **settings.pop(f"s{i + 1}", {})}
        for i in range(n)
    ]
    return PoolConfig.model_validate({"servers": servers, **settings})


def run(
    config: PoolConfig,
    policy: str,
    *,
    requests: int = 20_000,
    rate: float = 200.0,
    mean: float = 0.01,
    servers: dict[str, ServerModel] | None = None,
    slots: int = 4,
) -> Run:
    arrivals = Arrivals(requests=requests, rate=rate, service=TimeDistribution(mean=mean))
    spec = WorkloadSpec(
        seed=SEED,
        arrivals=arrivals,
        default_server=ServerModel(capacity=slots),
        servers=servers or {},
    )
    return simulate(config, "app", policy, synthetic(arrivals, SEED), spec)


def down(start: float, length: float, mode: str = "refuse", **kw: Any) -> ServerModel:
    return ServerModel(failures=(Failure(at=start, for_=length, mode=mode, **kw),))


def test_a_refusing_server_is_retried_elsewhere_and_ejected() -> None:
    result = run(pool(retries=1), "round_robin", servers={"s2": down(20.0, 30.0)})
    summary = summarize(result)
    assert summary.failed == 0  # every refused connect found another server
    assert 0 < summary.retried < 100  # outlier ejection soon keeps s2 out
    assert result.ejections >= 1
    # while s2 refused (20-50 s of 100 s), the others took its share
    assert summary.shares["s2"] < 0.25


def test_without_retries_a_refused_connect_is_a_502() -> None:
    result = run(pool(retries=0), "round_robin", servers={"s2": down(20.0, 30.0)})
    assert 0 < summarize(result).failed < 100
    assert set(result.status) == {200, 502}


def test_active_checks_take_a_refusing_server_down_and_bring_it_back() -> None:
    config = pool(
        retries=1,
        health={
            "active": {"interval": "1s", "timeout": "1s", "rise": 2, "fall": 3},
            "passive": {"enabled": False},
        },
    )
    result = run(config, "round_robin", servers={"s3": down(10.0, 20.0)})
    assert result.health_changes == 2  # down after 3 failed probes, up after 2 good ones
    summary = summarize(result)
    assert summary.failed == 0
    # about three probe intervals' worth of its requests were refused and retried
    assert 100 < summary.retried < 300


def test_a_server_answering_5xx_is_counted_failed_and_ejected() -> None:
    result = run(pool(), "round_robin", servers={"s1": down(10.0, 50.0, mode="error")})
    summary = summarize(result)
    assert result.ejections >= 1
    assert 0 < summary.failed < 200
    assert {500, 200} == set(result.status)


def test_least_conn_sends_less_to_a_slow_server_than_round_robin() -> None:
    slow = {"s3": ServerModel(capacity=4, speed=0.25)}
    rotation = summarize(run(pool(), "round_robin", servers=slow, rate=600.0))
    least = summarize(run(pool(), "least_conn", servers=slow, rate=600.0))
    assert rotation.shares["s3"] > 0.33
    assert least.shares["s3"] < 0.2
    assert least.p99 < rotation.p99


def test_weights_set_the_shares() -> None:
    config = pool(s1={"weight": 3}, s2={"weight": 1}, s3={"weight": 1})
    summary = summarize(run(config, "weighted_round_robin", rate=100.0))
    assert summary.shares["s1"] == 0.6
    assert summary.imbalance == 1.0  # requests per unit of weight are even


def test_max_conns_queues_in_the_pools_own_queue_and_times_out() -> None:
    config = pool(n=1, max_conns=2, queue={"size": 50, "timeout": "50ms"})
    result = run(config, "round_robin", rate=300.0, mean=0.01, slots=8)
    summary = summarize(result)
    assert result.pool_queued > 1000
    assert summary.failed > 0  # the queue timeout answered 503
    assert set(result.status) == {200, 503}
    # a request that waited in the pool's queue and was then served: wait > 0
    assert summary.queued > 0.3


def test_the_retry_budget_bounds_retries() -> None:
    config = pool(
        retries=2,
        retry_budget={"ratio": 0.0, "min_per_second": 1.0},
        health={"passive": {"enabled": False}},  # s1 stays in: every third request fails
    )
    summary = summarize(run(config, "round_robin", servers={"s1": down(0.0, 200.0)}))
    # 1 retry per second over a 10 s window: about 100 in 100 s, where 6,700 were wanted
    assert 50 <= summary.retried <= 120
    assert summary.failed > 6000
