"""Shared test settings.

Hypothesis: CI (scripts/test.sh sets HYPOTHESIS_PROFILE=ci) draws the same examples every run,
so a red build is reproducible; locally the default profile explores new examples each run.
Failures found that way are pinned with ``@example`` in the tests.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
