"""`PORTICO_FUZZ_EXAMPLES=N`: every property test here tries N examples (a long fuzz session;
CI runs hypothesis' default of 100, and test_request_path's own count)."""

from __future__ import annotations

import os

from hypothesis import settings

if os.environ.get("PORTICO_FUZZ_EXAMPLES"):
    settings.register_profile(
        "fuzz", max_examples=int(os.environ["PORTICO_FUZZ_EXAMPLES"]), deadline=None
    )
    settings.load_profile("fuzz")
