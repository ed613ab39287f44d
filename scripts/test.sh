#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine, then run it.
# Used verbatim by the README's test command and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

# Browser for the UI tests (Debian's chromium; never `playwright install`).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
    || echo "warning: could not install chromium; UI tests will be skipped"
fi
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e ".[all]"

# Real datasets through the normal local-data option, when the shared folder is there.
if [[ -z "${DSB_DATA_DIR:-}" && -d ../shared/data ]]; then
  export DSB_DATA_DIR="$(cd ../shared/data && pwd)"
fi
export DSB_FAST=1                      # notebooks in fast mode
export HYPOTHESIS_PROFILE=ci           # reproducible property-based examples (tests/conftest.py)
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1  # tests never reach for the hub (local data or skip)
export DSB_CACHE_DIR="${DSB_CACHE_DIR:-$HOME/.cache/dsb_widgets}"
export PYTHONUNBUFFERED=1
# Static checks first (ruff + mypy, configured in pyproject.toml): a lint error fails the run.
bash scripts/lint.sh
mkdir -p artifacts
python3 -m pytest tests notebooks --nbmake --nbmake-timeout=600 -p no:cacheprovider \
  --timeout=900 --durations=25 "$@"
