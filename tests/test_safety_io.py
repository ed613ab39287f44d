"""Bad input fails fast with one line (exit 2), and no result is ever lost (issue 18, items 7-12).

Every CLI case here patches the data loaders to fail loudly, so "fails before any data loading"
is checked, not assumed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dsb_widgets.cli import main

FAST = ["--steps", "4", "--probe-size", "50", "--probes", "real", "maxent1", "--device", "cpu", "-o", "width=16"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def no_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any data loading fails the test: the error must come before it."""
    import dsb_widgets.engine.images as images

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("data was loaded before the bad input was refused")

    monkeypatch.setattr(images, "load_images", boom)


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("dsb: error:"), err
    assert "\n" not in err and "Traceback" not in err, err
    return err


# --- item 10: typed experiment options -------------------------------------------------------------
@pytest.mark.parametrize(("option", "needle"), [
    ("widht=64", "did you mean 'width'"),
    ("foo=bar", "unknown option 'foo'"),
    ("taylor=maybe", "-o taylor=true"),
    ("width=0", "width' must be >= 1"),
    ("width=abc", "integer"),
    ("train_on=fake", "gauss_clone"),
    ("ot_shrinkage=lots", "ot_shrinkage=optimal"),
    ("taylor_method=magic", "hutchinson"),
])
def test_bad_image_option_exits_2_before_data_loading(option: str, needle: str, tmp_path: Path, no_data: None,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "images", *FAST, "-o", option, "--out", str(tmp_path / "r.nc")]) == 2
    assert needle in _one_line_error(capsys)
    assert not (tmp_path / "r.nc").exists()


@pytest.mark.parametrize(("args", "needle"), [
    (["-o", "n_head=3"], "not divisible"),
    (["--context", "1"], "context' must be >= 2"),
    (["-o", "mask_prob=2"], "mask_prob"),
    (["--tokenizer", "words"], "gpt2"),
    (["-o", "contxt=8"], "did you mean 'context'"),
])
def test_bad_text_option_exits_2(args: list[str], needle: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "text", "--corpus", "tinyshakespeare", *args, "--out", str(tmp_path / "t.nc")]) == 2
    assert needle in _one_line_error(capsys)


def test_options_of_another_experiment_are_refused(tmp_path: Path, no_data: None,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "images", *FAST, "--context", "8", "--out", str(tmp_path / "r.nc")]) == 2
    assert "unknown option 'context' for experiment 'images'" in _one_line_error(capsys)


def test_run_help_lists_every_experiments_options(capsys: pytest.CaptureFixture[str]) -> None:
    from dataclasses import fields

    from dsb_widgets.options_clones import CloneOptions
    from dsb_widgets.options_images import ImageOptions
    from dsb_widgets.options_text import TextOptions

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for schema in (ImageOptions, TextOptions, CloneOptions):
        for f in fields(schema):
            assert f"    {f.name}=" in out, f.name


def test_options_are_stored_typed_and_builders_read_them() -> None:
    from dsb_widgets.engine import RunConfig, get_experiment, resolve_config
    from dsb_widgets.options_images import ImageOptions

    cfg = resolve_config(RunConfig(options={"width": "64", "taylor": "false", "ot_shrinkage": 0.5}))
    assert cfg.options["width"] == 64 and cfg.options["taylor"] is False
    opts = get_experiment("images").parse(cfg)
    assert isinstance(opts, ImageOptions) and opts.shrinkage == 0.5
    assert ImageOptions(ot_shrinkage="none").shrinkage is None


def test_one_list_of_datasets_per_experiment() -> None:
    from dsb_widgets.data.images import KNOWN_IMAGE_DATASETS
    from dsb_widgets.data.text import CORPORA
    from dsb_widgets.engine import get_experiment

    assert get_experiment("images").datasets is KNOWN_IMAGE_DATASETS
    assert get_experiment("text").datasets is CORPORA
    assert get_experiment("clones").datasets is CORPORA


def test_sweep_cells_use_the_same_schema(tmp_path: Path) -> None:
    from dsb_widgets.errors import ConfigError
    from dsb_widgets.sweep_config import expand, parse_sweep

    spec = {"out_dir": str(tmp_path), "base": {"experiment": "images", "steps": 4},
            "grid": {"options.widht": [16, 32]}}
    with pytest.raises(ConfigError, match="did you mean 'width'"):
        expand(parse_sweep(spec))
