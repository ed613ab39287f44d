"""Startup and thread policy (issue 17): parsing imports nothing heavy, runs never oversubscribe."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading

import pytest

from dsb_widgets.errors import BusyError, ConfigError
from dsb_widgets.threads import SMALL_MODEL_FLOPS, auto_threads, check_threads

PROBE_IMPORTS = ("import sys; "
                 "print(sorted(m for m in ('torch', 'xarray', 'numpy', 'sklearn', 'distributed') if m in sys.modules))")


def _run_py(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_help_and_argument_errors_import_no_heavy_module() -> None:
    code = ("from dsb_widgets.cli import build_parser, main\n"
            "p = build_parser(); p.format_help()\n"
            "for cmd in ('run', 'serve', 'clone', 'sweep'):\n"
            "    try: main([cmd, '--help'])\n"
            "    except SystemExit as e: assert e.code == 0\n"
            "try: main(['run', '--steps', 'abc'])\n"
            "except SystemExit as e: assert e.code == 2\n"
            f"{PROBE_IMPORTS}")
    res = _run_py(code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"
    assert "invalid int value: 'abc'" in res.stderr


def test_bad_threads_fails_before_loading_anything() -> None:
    res = _run_py("from dsb_widgets.cli import main\n"
                  "import sys\nrc = main(['run', '--threads', '0'])\n"
                  f"assert rc == 2, rc\n{PROBE_IMPORTS}")
    assert res.returncode == 0, res.stderr
    assert "--threads must be >= 1" in res.stderr and res.stdout.strip() == "[]"


def test_clone_parser_defaults_equal_the_clone_config() -> None:
    from dsb_widgets.cli_parsers import CLONE_DEFAULTS
    from dsb_widgets.clones import CloneConfig

    want = {f.name: f.default for f in dataclasses.fields(CloneConfig) if f.name != "corpus"}
    assert want == CLONE_DEFAULTS


def test_auto_threads_never_oversubscribes() -> None:
    for cores in (1, 2, 3, 8, 64):
        for runs in range(1, 10):
            for busy in (None, 0.0, 1.0, cores / 2, 3.0 * cores):
                n = auto_threads(runs, cores=cores, busy=busy)
                assert n >= 1 and (n * runs <= cores or n == 1)
                assert n == 1 or n <= cores - (busy or 0) + 0.5  # never more than the idle cores
    assert auto_threads(1, cores=8, step_flops=SMALL_MODEL_FLOPS / 2, busy=0) == 1
    assert auto_threads(2, cores=8, step_flops=SMALL_MODEL_FLOPS * 10, busy=0) == 4
    assert auto_threads(1, cores=8, busy=5.0) == 3 and auto_threads(1, cores=2, busy=20.0) == 1
    assert check_threads(None) is None and check_threads(3) == 3
    with pytest.raises(ConfigError, match="--threads must be >= 1"):
        check_threads(0)


def test_step_flops_counts_linear_and_grouped_conv_exactly() -> None:
    import torch
    from torch import nn

    from dsb_widgets.threads import step_flops

    mlp = nn.Sequential(nn.Linear(10, 7), nn.ReLU(), nn.Linear(7, 3))
    assert step_flops(mlp, torch.zeros(5, 10)) == 5 * (10 * 7 + 7 * 3)
    conv = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.BatchNorm2d(8))
    conv.train()
    before = conv[1].running_mean.clone()
    assert step_flops(conv, torch.randn(2, 4, 5, 5)) == 2 * 8 * 25 * (2 * 9)
    assert conv.training and torch.equal(conv[1].running_mean, before)  # estimate leaves the model alone


def test_train_sets_threads_in_its_own_thread() -> None:
    import torch

    from dsb_widgets.engine import RunConfig, train

    seen: list[int] = []

    def on_event(ev: dict) -> None:
        if ev["type"] == "start":
            seen.append(torch.get_num_threads())

    cfg = RunConfig(experiment="images", steps=2, probe_size=20, probes=("real",))

    def target(threads: int | str) -> None:
        torch.set_num_threads(3)  # what the thread had before
        train(cfg, subscribers=[on_event], threads=threads)

    for threads in (2, "auto"):
        t = threading.Thread(target=target, args=(threads,))
        t.start()
        t.join()
    assert seen == [2, 1]  # explicit; auto: the digits MLP is below SMALL_MODEL_FLOPS, one thread


def test_registry_refuses_runs_beyond_capacity(tmp_path) -> None:
    from dsb_widgets.engine import RunConfig
    from dsb_widgets.runs import RunRegistry

    reg = RunRegistry(threads=1, max_runs=1)
    cfg = RunConfig(experiment="images", steps=100_000, probe_size=20, probes=("real",))
    first = reg.start(cfg)
    try:
        with pytest.raises(BusyError, match="stop one or wait"):
            reg.start(cfg)
        assert len(reg.runs()) == 1
    finally:
        first.stop()
        first.join(60)
    assert not first.alive
    second = reg.start(cfg.replace(steps=1))  # a slot is free again
    second.join(60)
    assert second.store.status == "finished"
