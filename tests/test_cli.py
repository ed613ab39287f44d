"""`dsb run images`: writes the netCDF, prints the per-probe table, fails early on bad options."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dsb_widgets.cli import main
from dsb_widgets.engine import RunConfig, load_results
from dsb_widgets.engine.images import IMAGE_PROBES
from dsb_widgets.engine.results import summary_table

FAST = ["--steps", "8", "--seeds", "2", "--probe-size", "100", "--device", "cpu", "-o", "width=32"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _table(out: str) -> dict[str, list[str]]:
    """The printed summary tables (DSB probes, then edit probes): probe -> its columns."""
    lines = out.splitlines()
    starts = [i for i, line in enumerate(lines)
              if line.startswith("probe") and ("min step" in line or "target acc" in line)]
    assert starts, "no summary table printed"
    rows = {}
    for start in starts:
        for line in lines[start + 1:]:
            if not line.strip() or line.startswith(("results:", "wall ")):
                break
            cols = line.split()
            rows[cols[0]] = cols[1:]
    return rows


def test_run_images_writes_netcdf_and_prints_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs" / "d.nc"
    assert main(["run", "images", *FAST, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    ds = load_results(out)
    assert dict(ds.sizes) == {"step": 8, "probe": len(IMAGE_PROBES), "seed": 2}  # 0..6, 8 (3/octave)
    assert (tmp_path / "runs" / "d.probes.pt").exists() and (tmp_path / "runs" / "d.state.pt").exists()
    cfg = RunConfig.from_json(ds.attrs["config"])
    assert (cfg.steps, cfg.seeds, cfg.probe_size, cfg.dataset, cfg.model) == (8, 2, 100, "digits", "mlp")
    rows = _table(printed)
    assert list(rows) == list(IMAGE_PROBES)
    for r in summary_table(ds):  # the table shows what the file holds
        cols = rows[r["probe"]]
        if r["kind"] == "edit":  # edit probes: target-label accuracy and loss, not the source-label loss
            assert cols[1:4] == [f"{r['max_target_acc']:.3f}", "@", str(r["max_target_acc_step"])]
            continue
        assert int(cols[1]) == r["min_step"]
        assert float(cols[2]) == pytest.approx(r["min_loss"], abs=6e-5)
        assert float(cols[3]) == pytest.approx(r["final_loss"], abs=6e-5)
    assert str(out) in printed and "probe evaluation" in printed


def test_summary_splits_dsb_and_edit_probes() -> None:
    """Edit probes (with a target label) are reported by their target-label accuracy and loss,
    in their own table; DSB probes with their floors; --per-seed adds one row per seed."""
    import math

    import xarray as xr

    from dsb_widgets.engine.results import METRICS, format_summary, probe_kinds

    steps = np.array([0, 1, 2, 4])
    loss = np.array([[2.3, 2.3], [1.0, 1.2], [0.5, 0.7], [0.8, 0.8]])  # (step, seed)
    data = {}
    for m in METRICS:
        arr = np.stack([loss, loss + 5], axis=1)  # (step, probe, seed): maxent1, ot
        if m.startswith("target"):
            arr[:, 0] = np.nan
            arr[:, 1] = np.array([[0.1, 0.1], [0.6, 0.4], [0.3, 0.3], [0.2, 0.2]]) if m == "target_accuracy" else loss
        data[m] = (("step", "probe", "seed"), arr)
    ds = xr.Dataset(data, coords={"step": steps, "probe": ["maxent1", "ot"], "seed": [0, 1],
                                  "probe_order": ("probe", [1.0, 2.0]), "floor": ("probe", [0.25, math.nan])})
    assert probe_kinds(ds) == {"maxent1": "dsb", "ot": "edit"}
    text = format_summary(ds)
    dsb, edit = text.split("Edit probes")
    assert "maxent1" in dsb and "ot " not in dsb and "0.2500" in dsb  # floor shown
    assert "0.500 @ 1 -> 0.200" in edit  # target acc: seed mean max 0.5 at step 1, final 0.2
    assert "0.600 @ 2 -> 0.800" in edit  # target loss: min 0.6 at step 2, final 0.8
    per_seed = format_summary(ds, per_seed=True)
    assert "maxent1[s0]" in per_seed and "ot[s1]" in per_seed and "0.600 @ 1" in per_seed
    assert "loss (nats" in text
    assert "loss (mean squared error" in format_summary(ds.assign_attrs(units="mse"))  # symmetry's regression


def test_resume_flag_continues_the_saved_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.nc"
    assert main(["run", "images", *FAST, "--out", str(out)]) == 0
    first = load_results(out)
    assert main(["run", "images", *FAST, "--out", str(out), "--resume"]) == 0
    np.testing.assert_allclose(load_results(out)["loss"].values, first["loss"].values)
    capsys.readouterr()
    # the same file with other options is refused, in one line
    assert main(["run", "images", *FAST, "--lr", "0.5", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dsb: error:") and "\n" not in err and "--resume" in err


def test_default_output_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--steps", "2", "--probe-size", "50", "--probes", "real", "ot", "--device", "cpu"]) == 0
    assert (tmp_path / "runs" / "images-digits-mlp.nc").exists()
    assert list(_table(capsys.readouterr().out)) == ["real", "ot"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--dataset", "imagenet"], "--dataset"),
        (["--model", "vit"], "--model"),
        (["--probes", "real", "maxent9"], "--probes"),
        (["--steps", "0"], "--steps"),
        (["--seeds", "0"], "--seeds"),
        (["-o", "train_on=noise"], "train_on"),
        (["-o", "width"], "KEY=VALUE"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_bad_options_exit_2_with_one_line(args: list[str], needle: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bad.nc"
    assert main(["run", "images", *args, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and err.startswith("dsb: error:") and needle in err
    assert not out.exists()  # failed before training


def test_missing_data_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "images", "--dataset", "fashion_mnist", "--data-dir", str(tmp_path / "none"),
                 "--steps", "2", "--out", str(tmp_path / "f.nc")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("dsb: error:")


@pytest.mark.slow  # a fresh interpreter imports torch and every subcommand (~10-30 s on 2 shared cores)
def test_console_script_rejects_unknown_choice(tmp_path: Path) -> None:
    """The installed entry point: argparse choices also exit 2, naming the option."""
    proc = subprocess.run([sys.executable, "-m", "dsb_widgets.cli", "run", "images", "--optimizer", "lbfgs"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "--optimizer" in proc.stderr.strip().splitlines()[-1]
    assert proc.stdout == ""


@pytest.mark.parametrize("aug, needle", [(["-o", "crop=2"], "-o crop=2"), (["-o", "flip=true"], "-o flip=true"),
                                         (["-o", "crop=3", "-o", "flip=true"], "-o crop=3 -o flip=true")])
def test_augmentation_on_a_clone_exits_2_before_loading_data(aug: list[str], needle: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Crops/flips augment real images; a clone run ignored them silently. Now: one line naming the fix,
    raised when the config is resolved, before any data is loaded."""
    import dsb_widgets.engine.images as images

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("data was loaded before the config was checked")

    monkeypatch.setattr(images, "load_images", no_loading)
    out = tmp_path / "clone.nc"
    assert main(["run", "images", *FAST, "-o", "train_on=gauss_clone", *aug, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("dsb: error:") and needle in err
    assert "train_on=gauss_clone" in err and "-o train_on=real" in err  # what conflicts, and the fix
    assert not out.exists()


def test_gmm_k_without_the_mixture_clone_exits_2_before_loading_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """-o gmm_k only sets the components of -o train_on=gmm_clone; any other run would ignore it."""
    import dsb_widgets.engine.images as images
    from dsb_widgets.engine.task import resolve_config

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("data was loaded before the config was checked")

    monkeypatch.setattr(images, "load_images", no_loading)
    out = tmp_path / "gmm.nc"
    assert main(["run", "images", *FAST, "-o", "train_on=gauss_clone", "-o", "gmm_k=64", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "-o gmm_k=64" in err and "-o train_on=gmm_clone" in err and "gauss_clone" in err
    assert not out.exists()
    cfg = resolve_config(RunConfig(experiment="images", options={"train_on": "gmm_clone", "gmm_k": 64}))
    assert cfg.options["gmm_k"] == 64 and resolve_config(cfg) == cfg  # accepted, and idempotent
    real = resolve_config(RunConfig(experiment="images"))
    assert resolve_config(real) == real  # a resolved config lists gmm_k at its default: no error


def test_clone_runs_turn_off_the_datasets_default_flips_and_accept_explicit_off() -> None:
    """CIFAR-10 flips by default (real training); a clone run saves flip=false (what ran) instead of an
    error, resolving is idempotent, and an explicit -o flip=false / crop=0 with a clone is fine."""
    from dsb_widgets.engine.task import resolve_config

    cfg = resolve_config(RunConfig(experiment="images", dataset="cifar10", options={"train_on": "iso_clone"}))
    assert cfg.options["flip"] is False and cfg.options["crop"] == 0
    assert resolve_config(cfg) == cfg
    real = resolve_config(RunConfig(experiment="images", dataset="cifar10"))
    assert real.options["flip"] is True  # real training keeps the dataset's default
    off = resolve_config(RunConfig(experiment="images", options={"train_on": "gauss_clone", "flip": False,
                                                                 "crop": 0}))
    assert off.options["flip"] is False
