"""benchmarks/paper_scale.py --tiny runs both loops on the same protocol and they agree (CPU smoke)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_paper_scale_tiny_runs_engine_and_hf_trainer(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import torch

    torch.set_num_threads(1)
    monkeypatch.setattr(sys, "argv", ["paper_scale.py", "--tiny"])
    runpy.run_path(str(ROOT / "benchmarks" / "paper_scale.py"), run_name="__main__")
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("engine  ", "hf      "))}
    assert set(rows) == {"engine", "hf"} and "hf / engine wall time" in out
    # same task, same sampler stream, same optimizer settings: the final held-out losses agree
    assert abs(float(rows["engine"][-1]) - float(rows["hf"][-1])) < 0.05
