"""GPU/compiler readiness of the engine, checked on CPU: ``--compile`` (torch.compile with a
one-line fallback), autocast only when asked, timers, device-sampling flags, and the CLI flag."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
import torch

from dsb_widgets.engine import RunConfig, accel, train
from dsb_widgets.engine.accel import DeviceTimer, Forward, autocast, compile_unavailable
from dsb_widgets.engine.task import build_task

TINY = RunConfig(dataset="digits", model="mlp", steps=6, seeds=1, per_octave=1, probe_size=100, probes=("real",),
                 device="cpu", options={"width": 16})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _no_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._inductor import config as inductor_config

    monkeypatch.setenv("CXX", "/nonexistent/g++")
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/g++",))


def test_compile_flag_is_left_out_of_plain_configs() -> None:
    """Configs saved before ``compile`` existed stay equal (resume, sweeps' finished check)."""
    assert "compile" not in RunConfig().to_json()
    on = RunConfig(compile=True)
    assert '"compile": true' in on.to_json() and RunConfig.from_json(on.to_json()) == on
    assert RunConfig.from_json(RunConfig().to_json()).compile is False


def test_cli_compile_flag_reaches_the_config() -> None:
    from dsb_widgets.cli import build_parser, config_from_args

    args = build_parser().parse_args(["run", "images", "--compile", "--steps", "3"])
    assert config_from_args(args).compile is True
    assert config_from_args(build_parser().parse_args(["run", "images"])).compile is False


def test_without_a_cxx_compiler_compile_falls_back_with_one_line(monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    _no_compiler(monkeypatch)
    assert "no C++ compiler" in str(compile_unavailable(torch.device("cpu")))
    with caplog.at_level(logging.WARNING, logger="dsb_widgets.engine.accel"):
        compiled = train(TINY.replace(compile=True))
    lines = [r.getMessage() for r in caplog.records if "--compile" in r.getMessage()]
    assert len(lines) == 1 and "no C++ compiler" in lines[0] and "\n" not in lines[0]
    plain = train(TINY)
    np.testing.assert_array_equal(compiled.dataset["loss"].values, plain.dataset["loss"].values)


def test_a_failing_compile_falls_back_at_the_first_call(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(module: torch.nn.Module) -> Any:
        def call(x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("backend exploded\nlong traceback")
        return call

    monkeypatch.setattr(accel, "compile_unavailable", lambda device: None)
    monkeypatch.setattr(torch, "compile", broken)
    said: list[str] = []
    model = torch.nn.Linear(3, 2)
    fwd = Forward(model, compile=True, warn=said.append)
    x = torch.randn(4, 3)
    assert fwd.compiled
    torch.testing.assert_close(fwd(x), model(x))  # the first call falls back and still answers
    assert not fwd.compiled and len(said) == 1 and "backend exploded" in said[0] and "\n" not in said[0]
    torch.testing.assert_close(fwd(x), model(x))


@pytest.mark.slow
def test_compiled_training_matches_eager_on_cpu() -> None:
    """torch.compile (inductor, C++ on CPU) really runs, and trains the same model: ~1 min cold."""
    if compile_unavailable(torch.device("cpu")) is not None:
        pytest.skip("no C++ compiler for inductor here (the fallback is tested above)")
    from torch._dynamo.utils import counters

    before = counters["stats"]["unique_graphs"]
    compiled = train(TINY.replace(compile=True))
    assert counters["stats"]["unique_graphs"] > before  # a graph was captured and compiled
    plain = train(TINY)
    for m in ("loss", "accuracy", "train_loss"):  # same maths, fused kernels: equal to float32 rounding
        np.testing.assert_allclose(compiled.dataset[m].values, plain.dataset[m].values, rtol=1e-4, atol=1e-5)


def test_autocast_is_no_context_when_off_and_bf16_when_on() -> None:
    cpu = torch.device("cpu")
    x = torch.randn(4, 4)
    with autocast(cpu, False):
        assert (x @ x).dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    with autocast(cpu, True):
        assert (x @ x).dtype == torch.bfloat16


def test_cpu_timer_accumulates_sections() -> None:
    timer = DeviceTimer(torch.device("cpu"))
    for _ in range(3):
        timer.start()
        sum(range(10_000))
        timer.stop()
    first = timer.total()
    assert first > 0 and timer.total() == first  # reading does not add anything


def test_images_sample_on_the_generator_device_and_keep_cpu_streams() -> None:
    """On CPU the batches are the same draws as before the device flag (indices from the CPU
    generator); the task says it can sample on the run device."""
    task = build_task(TINY)
    assert task.device_sampling
    gen = torch.Generator().manual_seed(5)
    x, y = task.sample_batch(gen, 8)
    from dsb_widgets.data import load_images

    train_set = load_images("digits", "train")
    idx = torch.randint(len(train_set.y), (8,), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(x, train_set.x[idx])
    torch.testing.assert_close(y, train_set.y[idx])
    clone_task = build_task(TINY.replace(options={"width": 16, "train_on": "gauss_clone"}))
    assert not clone_task.device_sampling  # samplers that draw on the CPU keep CPU generators


def test_wide_conv_models_train_one_seed_after_another_on_cpu() -> None:
    """make_stack's CPU rule (measured in bench_seeds.py): grouped up to 128 channels, else a loop."""
    from dsb_widgets.engine.ensemble import ModelStack
    from dsb_widgets.engine.grouped import GroupedStack, make_stack, max_conv_channels
    from dsb_widgets.models.vision import VisionConfig, make_vision_model

    cpu, ex = torch.device("cpu"), torch.rand(2, 1, 8, 8)

    def models(name: str) -> list[torch.nn.Module]:
        return [make_vision_model(name, VisionConfig((1, 8, 8), 10)) for _ in range(2)]

    assert max_conv_channels(models("resnet")[0]) == 512 and max_conv_channels(models("mlp")[0]) == 0
    resnet = make_stack(models("resnet"), cpu, ex)
    assert isinstance(resnet, ModelStack) and not resnet.vectorized
    assert isinstance(make_stack(models("resnet"), cpu, ex, strategy="grouped"), GroupedStack)  # still on request
    assert isinstance(make_stack(models("convnet"), cpu, ex), GroupedStack)


def test_grouped_training_evaluated_per_seed_equals_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A grouped CNN run (probes scored on each seed's own copy) == the same run stacked as a loop."""
    cfg = TINY.replace(model="cnn", seeds=2, steps=8, probes=("real", "maxent1"))
    grouped = train(cfg)
    monkeypatch.setenv("DSB_STACKING", "loop")
    loop = train(cfg)
    for m in ("loss", "accuracy", "train_loss"):
        np.testing.assert_allclose(grouped.dataset[m].values, loop.dataset[m].values, rtol=1e-4, atol=1e-5)
