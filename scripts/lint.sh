#!/usr/bin/env bash
# Static checks: ruff (lint only, no formatter) on the package, tests and benchmarks, and mypy on
# the package. Configuration lives in pyproject.toml ([tool.ruff], [tool.mypy]).
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
python3 -m ruff check dsb_widgets tests benchmarks || status=1
python3 -m mypy || status=1   # packages = ["dsb_widgets"] in pyproject.toml
exit "$status"
