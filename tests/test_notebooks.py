"""Every notebook is a jupytext pair that agrees with its .py, and follows the conventions.

(The notebooks themselves are executed by nbmake in CI: `pytest --nbmake notebooks/`.)
"""

from __future__ import annotations

import json
from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PAIRS = sorted(NOTEBOOKS.glob("*.ipynb"))


def _sources(nb: object) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells if c.source.strip()]  # type: ignore[attr-defined]


def test_there_are_notebooks() -> None:
    assert len(PAIRS) >= 2, "notebooks/ should hold the method walkthroughs"


@pytest.mark.parametrize("ipynb", PAIRS, ids=lambda p: p.stem)
def test_ipynb_and_py_agree(ipynb: Path) -> None:
    py = ipynb.with_suffix(".py")
    assert py.exists(), f"{py.name} missing: run `jupytext --set-formats ipynb,py:percent {ipynb}`"
    a, b = jupytext.read(ipynb), jupytext.read(py)
    assert _sources(a) == _sources(b), f"{ipynb.name} and {py.name} differ: run `jupytext --sync {py}`"


@pytest.mark.parametrize("ipynb", PAIRS, ids=lambda p: p.stem)
def test_conventions(ipynb: Path) -> None:
    nb = json.loads(ipynb.read_text())
    cells = [c for c in nb["cells"] if "".join(c["source"]).strip()]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    assert cells[0]["cell_type"] == "markdown", "start with a markdown narrative"
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert tagged and "DSB_FAST" in "".join(tagged[0]["source"]), "need a `parameters` cell reading DSB_FAST"
    assert any("inline=True" in s and "pn.extension" in s for s in code), "pn.extension(..., inline=True)"
    assert ".servable(" in code[-1], "the last code cell must be servable"
