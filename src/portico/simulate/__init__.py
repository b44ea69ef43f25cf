"""`portico simulate`: replay a trace of requests through the production balancing and health
objects against modelled servers, on simulated time, and compare policies.

`trace.py` reads Portico's access log or makes a synthetic trace from a spec (`spec.py`);
`engine.py` runs the discrete-event simulation around the real `Pool`; `report.py` summarises
it (latency percentiles, queueing, failures, retries, load share, imbalance) as text, CSV and
a PNG. Nothing here re-implements a policy: a simulation's verdicts are the proxy's own.
"""

from portico.simulate.engine import Run, simulate
from portico.simulate.report import Summary, summarize
from portico.simulate.spec import WorkloadSpec, load_spec
from portico.simulate.trace import Trace, read_access_log, synthetic

__all__ = [
    "Run",
    "Summary",
    "Trace",
    "WorkloadSpec",
    "load_spec",
    "read_access_log",
    "simulate",
    "summarize",
    "synthetic",
]
