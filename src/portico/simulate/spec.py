"""The workload file of `portico simulate`: modelled servers, and optionally a synthetic trace.
*pure*

Owns the frozen pydantic models of the YAML (`WorkloadSpec`: `servers`, `default_server`,
`arrivals`, `seed`) and `load_spec`. Durations and sizes are written as in the config file
(``10ms``, ``20KiB``). Never generates requests (`trace.py` does) and never simulates.

```yaml
seed: 1
arrivals:                       # a synthetic trace; leave out with --trace
  requests: 100000              # or duration: 60s
  rate: 800/s                   # Poisson arrivals
  service: {distribution: exponential, mean: 10ms}
  size: {distribution: lognormal, mean: 20KiB, sigma: 1}    # response bodies
  transfer: 100MiB              # bytes/s a server sends one response at (adds size/transfer)
  clients: 1000                 # distinct client addresses (hash policies key on them)
default_server: {speed: 1.0, capacity: 8}
servers:
  s2:
    speed: 0.5                  # half as fast: service times double
    failures:
      - {at: 30s, for: 10s, mode: refuse}   # connections refused from 30s to 40s
```
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from portico.config.units import Duration, DurationOrZero, Size
from portico.filters.ratelimit import parse_rate

__all__ = [
    "Arrivals",
    "Failure",
    "ServerModel",
    "SizeDistribution",
    "TimeDistribution",
    "WorkloadSpec",
    "load_spec",
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _positive(value: float) -> float:
    if not value > 0:
        raise ValueError(f"must be more than 0, not {value}")
    return value


def _rate(value: object) -> object:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a rate: write e.g. 800/s")
    return parse_rate(value)


Shape = Literal["exponential", "constant", "lognormal", "pareto", "uniform"]


class _Shape(_Model):
    """The shape of a distribution with a given mean: `sigma` for lognormal (of the log),
    `alpha` for pareto (> 1, the tail index: smaller is heavier)."""

    distribution: Shape = "exponential"
    sigma: Annotated[float, AfterValidator(_positive)] = 1.0
    alpha: float = 2.5

    @model_validator(mode="after")
    def _finite_mean(self) -> Self:
        if self.distribution == "pareto" and not self.alpha > 1:
            raise ValueError("a pareto distribution needs alpha > 1 (a finite mean)")
        return self


class TimeDistribution(_Shape):
    mean: Duration


class SizeDistribution(_Shape):
    mean: Size


class Failure(_Model):
    """A server misbehaving from `at` for `for` seconds (simulated time from the first request).

    refuse: connections are refused (retried elsewhere, as a failed connect); error: it
    answers 5xx after its service time; slow: its service times are `factor` times longer.
    """

    at: DurationOrZero
    for_: Duration = Field(alias="for")
    mode: Literal["refuse", "error", "slow"] = "refuse"
    factor: Annotated[float, AfterValidator(_positive)] = 10.0

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class ServerModel(_Model):
    """One modelled server: `speed` divides service times (2.0: twice as fast); `capacity` is
    how many requests it serves at once (more wait in its own queue, FIFO)."""

    speed: Annotated[float, AfterValidator(_positive)] = 1.0
    capacity: Annotated[int, Field(ge=1, le=100_000)] = 8
    failures: tuple[Failure, ...] = ()


class Arrivals(_Model):
    """A synthetic trace: Poisson arrivals at `rate`, with service times (and response sizes)
    drawn from the given distributions."""

    requests: Annotated[int, Field(ge=1, le=100_000_000)] | None = None
    duration: Duration | None = None
    rate: Annotated[float, BeforeValidator(_rate)]
    service: TimeDistribution
    size: SizeDistribution | None = None
    transfer: Size | None = None
    clients: Annotated[int, Field(ge=1)] = 1000

    @model_validator(mode="after")
    def _how_many(self) -> Self:
        if (self.requests is None) == (self.duration is None):
            raise ValueError("give requests (a count) or duration (e.g. 60s), one of them")
        if self.transfer is not None and self.size is None:
            raise ValueError("transfer needs size: the bytes it takes time to send")
        return self


class WorkloadSpec(_Model):
    seed: int = 1
    arrivals: Arrivals | None = None
    default_server: ServerModel = Field(default_factory=ServerModel)
    servers: dict[str, ServerModel] = Field(default_factory=dict)

    def server(self, name: str) -> ServerModel:
        return self.servers.get(name, self.default_server)


def load_spec(text: str) -> WorkloadSpec:
    """Parse and validate a workload file. Raises ValueError with every problem and its path."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not YAML: {exc}") from None
    try:
        return WorkloadSpec.model_validate(data or {})
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: "
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors(include_url=False)
        ]
        raise ValueError("; ".join(problems)) from None
