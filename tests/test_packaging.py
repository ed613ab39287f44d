"""pyproject.toml is the single source of dependencies; environment.yml must not drift from it."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _env() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def _pip_lines(env: dict) -> list[str]:
    for dep in env["dependencies"]:
        if isinstance(dep, dict) and "pip" in dep:
            return dep["pip"]
    raise AssertionError("environment.yml has no pip section")


def test_environment_installs_the_package_with_every_extra() -> None:
    extras = set(_pyproject()["project"]["optional-dependencies"]) - {"all"}
    editable = [line for line in _pip_lines(_env()) if line.startswith("-e .")]
    assert len(editable) == 1, "environment.yml must install the package itself with `-e .[extras]`"
    named = set(re.search(r"\[(.*)\]", editable[0]).group(1).split(","))
    assert named == extras, f"environment.yml extras {sorted(named)} != pyproject extras {sorted(extras)}"


def test_environment_lists_no_dependency_of_its_own() -> None:
    conda = [d for d in _env()["dependencies"] if isinstance(d, str)]
    assert all(re.match(r"^(python|pip)\b", d) for d in conda), f"conda deps beyond python/pip: {conda}"
    pip = [line for line in _pip_lines(_env()) if not line.startswith("-e .")]
    assert pip == ["torch==2.13.0"], f"only the torch CPU pin may sit beside the package, found {pip}"


def test_python_versions_agree() -> None:
    conda_py = next(d for d in _env()["dependencies"] if isinstance(d, str) and d.startswith("python"))
    version = tuple(int(v) for v in conda_py.split("=")[1].split("."))
    floor = _pyproject()["project"]["requires-python"].removeprefix(">=")
    assert version >= tuple(int(v) for v in floor.split(".")), f"{conda_py} violates requires-python {floor}"


def test_all_extra_covers_every_extra() -> None:
    opt = _pyproject()["project"]["optional-dependencies"]
    named = set(re.search(r"\[(.*)\]", opt["all"][0]).group(1).split(","))
    assert named == set(opt) - {"all"}


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in readme and "scripts/test.sh" in ci
