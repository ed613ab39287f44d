"""The checkpoints experiment: a toy GPT-NeoX suite evaluated offline, the Dataset contract, resume, errors."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from dsb_widgets.checkpoint_suite import find_suite, log_spaced, suite_steps, train_toy_suite
from dsb_widgets.cli import main
from dsb_widgets.divergence import DIVERGENCE_PROBES
from dsb_widgets.engine import RunConfig, train
from dsb_widgets.engine.results import load_results
from dsb_widgets.errors import ConfigError, DataNotFoundError

WORDS = ["the", "cat", "dog", "sat", "on", "mat", "ran", "to", "a", "big", "red", "house", "and", "saw", "bird"]


def _corpus(path: Path, n_words: int, seed: int = 0) -> Path:
    """A text of words from a random sparse word-bigram chain (unigram != bigram statistics)."""
    rng = np.random.default_rng(seed)
    V = len(WORDS)
    P = rng.dirichlet(np.full(V, 0.2), size=V)  # sparse-ish transition rows
    w, out = 0, []
    for i in range(n_words):
        w = int(rng.choice(V, p=P[w]))
        out.append(WORDS[w] + ("\n\n" if i % 40 == 39 else ""))
    path.write_text(" ".join(out))
    return path


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("suite")
    text = _corpus(root / "corpus.txt", 6000)
    train_toy_suite(root / "suite", corpus=str(text), tokenizer="bpe", vocab_size=300, max_step=8,
                    d_model=32, n_head=2, context=32, batch_size=8, warmup=2)
    return root / "suite", text


def test_suite_layout(suite: tuple[Path, Path]) -> None:
    folder, _ = suite
    assert sorted(int(p.name[4:]) for p in folder.glob("step*")) == [0, 1, 2, 4, 8]
    for p in folder.glob("step*"):
        assert (p / "model.safetensors").is_file() and (p / "tokenizer.json").is_file()
    assert [c.step for c in find_suite(str(folder))] == [0, 1, 2, 4, 8]
    assert [c.step for c in find_suite(str(folder), ("step8", "step1"))] == [1, 8]
    assert suite_steps(512) == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    pythia = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512] + list(range(1000, 144000, 1000))
    assert log_spaced(pythia) == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 4000, 8000, 16000,
                                  32000, 64000, 128000, 143000]


def test_cli_contract(suite: tuple[Path, Path], tmp_path: Path) -> None:
    folder, text = suite
    out = tmp_path / "ck.nc"
    assert main(["run", "checkpoints", "--model", str(folder), "--corpus", str(text), "--out", str(out),
                 "--probe-size", "8", "-o", "context=16"]) == 0
    ds = load_results(out)
    assert ds.step.values.tolist() == [0, 1, 2, 4, 8]
    probes = ds.probe.values.tolist()
    assert {"real", "unigram", "bigram", "trigram", *DIVERGENCE_PROBES} <= set(probes)
    assert ds.sizes["seed"] == 1 and np.isnan(ds.train_loss).all()
    loss = ds.loss.isel(seed=0)
    assert np.isfinite(loss).all()
    for name in ("unigram", "bigram", "trigram"):
        floor = float(ds.floor.sel(probe=name))
        assert 0 < floor <= float(loss.sel(probe=name).min()) + 1e-6  # no model beats the exact floor
    js = loss.sel(probe=[p for p in probes if p.startswith("js_")]).values
    kl = loss.sel(probe=[p for p in probes if p.startswith("kl_")]).values
    assert (js >= 0).all() and (js <= math.log(2) + 1e-9).all() and (kl >= 0).all()
    assert float(ds.probe_order.sel(probe="kl_bigram")) == 2.0
    assert math.isinf(float(ds.probe_order.sel(probe="real")))
    # the untrained step-0 model is near uniform: loss ~ log V on every probe
    assert abs(float(loss.sel(step=0, probe="real")) - math.log(ds.attrs["vocab_size"])) < 0.2


def test_resume_continues_at_the_next_checkpoint(suite: tuple[Path, Path], tmp_path: Path) -> None:
    folder, text = suite
    cfg = RunConfig(experiment="checkpoints", model=str(folder), dataset=str(text), probe_size=6,
                    probes=("real", "unigram", "bigram", "kl_unigram", "js_bigram"), options={"context": 12})
    full = train(cfg, out=tmp_path / "full.nc").dataset
    stop = threading.Event()
    seen: list[int] = []

    def on_event(ev: dict) -> None:
        if ev["type"] == "checkpoint":
            seen.append(ev["step"])
            if len(seen) == 2:
                stop.set()

    first = train(cfg, out=tmp_path / "part.nc", subscribers=[on_event], stop_event=stop)
    assert first.status == "stopped" and first.dataset.step.values.tolist() == [0, 1]
    seen.clear()
    rest = train(cfg, out=tmp_path / "part.nc", resume=True, subscribers=[on_event])
    assert rest.status == "finished" and seen == [2, 4, 8]  # only the missing checkpoints were loaded
    np.testing.assert_allclose(rest.dataset.loss.values, full.loss.values, rtol=1e-6)
    with pytest.raises(ConfigError, match="another config"):
        train(cfg.replace(probe_size=7), out=tmp_path / "part.nc", resume=True)


def test_offline_hub_id_fails_with_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import huggingface_hub

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "list_repo_refs", offline)
    with pytest.raises(DataNotFoundError, match="local folder of step<N>/"):
        find_suite("EleutherAI/pythia-70m", ("step0",))
    assert main(["run", "checkpoints", "--model", "EleutherAI/pythia-70m", "--corpus", "tinyshakespeare",
                 "--out", "/nonexistent/x.nc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model a local folder" in err[0]


def test_hub_revisions_are_listed_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Online path without the network: list_repo_refs answers Pythia's branch names."""
    import types

    import huggingface_hub

    steps = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512] + list(range(1000, 144000, 1000))
    refs = types.SimpleNamespace(branches=[types.SimpleNamespace(name=n) for n in
                                           ["main"] + [f"step{s}" for s in steps]])
    monkeypatch.setattr(huggingface_hub, "list_repo_refs", lambda repo_id: refs)
    suite = find_suite("EleutherAI/pythia-70m")
    assert [c.step for c in suite] == log_spaced(steps) and suite[3].revision == "step4"
    assert all(c.location == "EleutherAI/pythia-70m" and not c.local for c in suite)
    chosen = find_suite("EleutherAI/pythia-70m", ("step143000", "step0"))
    assert [(c.step, c.revision) for c in chosen] == [(0, "step0"), (143000, "step143000")]
    with pytest.raises(ConfigError, match="no revision 'step3'"):
        find_suite("EleutherAI/pythia-70m", ("step3",))


def test_bad_inputs(tmp_path: Path, suite: tuple[Path, Path]) -> None:
    folder, text = suite
    with pytest.raises(DataNotFoundError, match="no step<N>/ folder"):
        find_suite(str(tmp_path))
    with pytest.raises(ConfigError, match="lacks some of the revisions"):
        find_suite(str(folder), ("step3",))
    from dsb_widgets.cli import build_parser, config_from_args
    from dsb_widgets.engine.task import resolve_config

    args = build_parser().parse_args(["run", "checkpoints", "--model", str(folder), "--corpus", str(text),
                                      "--revisions", "step8", "step0"])
    cfg = resolve_config(config_from_args(args))
    assert cfg.options["revisions"] == ["step8", "step0"] and cfg.model == str(folder)
    with pytest.raises(ConfigError, match="lacks some of the revisions"):
        resolve_config(cfg.replace(options={"revisions": ["step5"]}))
    with pytest.raises(ConfigError, match="--seeds 1"):
        resolve_config(RunConfig(experiment="checkpoints", model=str(folder), dataset=str(text), seeds=2))


def test_text_experiment_divergence_probes(tmp_path: Path) -> None:
    """``dsb run text`` measures the same KL / JS per checkpoint for every seed."""
    text = _corpus(tmp_path / "c.txt", 3000, seed=1)
    cfg = RunConfig(experiment="text", dataset=str(text), steps=4, seeds=2, probe_size=8, batch_size=8,
                    probes=("real", "unigram", "kl_unigram", "kl_bigram", "js_trigram"),
                    options={"tokenizer": "char", "vocab_size": 0, "context": 16, "d_model": 16, "n_head": 2})
    ds = train(cfg).dataset
    assert ds.probe.values.tolist() == ["real", "unigram", "kl_unigram", "kl_bigram", "js_trigram"]
    vals = ds.loss.sel(probe=["kl_unigram", "kl_bigram", "js_trigram"]).values  # (step, 3, seed)
    assert np.isfinite(vals).all() and (vals >= 0).all()
    assert not np.allclose(vals[..., 0], vals[..., 1])  # two seeds, two models
    with pytest.raises(ConfigError, match="need --model gpt"):
        from dsb_widgets.engine.task import resolve_config

        resolve_config(cfg.replace(model="bert"))


def test_suite_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from dsb_widgets.checkpoint_suite import main as suite_main

    text = _corpus(tmp_path / "c.txt", 1500, seed=2)
    assert suite_main([str(tmp_path / "s"), "--corpus", str(text), "--vocab-size", "280", "--max-step", "2"]) == 0
    assert [c.step for c in find_suite(str(tmp_path / "s"))] == [0, 1, 2]
    assert "next: dsb run checkpoints --model" in capsys.readouterr().out


@pytest.mark.slow
def test_unigram_minimum_comes_before_bigram_on_a_toy_suite(tmp_path: Path) -> None:
    """Belrose et al.'s ordering on a 256-step toy GPT-NeoX suite (~10 s CPU; robust over seeds 0-2).

    Measured (seeds 0, 1, 2): unigram-probe minimum at step 32 each time, then +0.87 / +0.85 / +0.97
    nats by step 256; bigram loss falls to the end; KL(unigram || model) bottoms out at 32 while
    KL(bigram || model) falls to ~0.04 (the corpus is a word-bigram chain).
    """
    text = _corpus(tmp_path / "c.txt", 20000, seed=0)
    train_toy_suite(tmp_path / "suite", corpus=str(text), vocab_size=300, max_step=256, d_model=32, n_head=2,
                    context=32, batch_size=16, warmup=8, lr=3e-3)
    cfg = RunConfig(experiment="checkpoints", model=str(tmp_path / "suite"), dataset=str(text), probe_size=32,
                    probes=("real", "unigram", "bigram", "kl_unigram", "kl_bigram"), options={"context": 32})
    loss = train(cfg).dataset.loss.isel(seed=0).to_pandas()  # (step, probe)
    assert loss.index.tolist() == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256]
    argmin = loss.idxmin()
    assert argmin["unigram"] < argmin["bigram"]
    assert loss["unigram"].iloc[-1] > loss["unigram"].min() + 0.3  # the unigram loss rises again
    assert argmin["kl_unigram"] < argmin["kl_bigram"]
    assert loss["kl_bigram"].iloc[-1] < loss["kl_unigram"].iloc[-1]  # the model ends nearer the bigram predictor


def test_saved_config_is_the_one_asked_for_and_old_files_still_resume(suite: tuple[Path, Path],
                                                                      tmp_path: Path) -> None:
    """The driver saves the config it was asked for (``--steps`` untouched) and the suite's last step in
    ``attrs["final_step"]``; the sweep counts it finished there. A file written before (config steps =
    last step, no final_step) still loads, and ``--resume`` rewrites it in the current form without
    evaluating any checkpoint again."""
    from dsb_widgets.engine.results import write_atomic
    from dsb_widgets.engine.task import resolve_config
    from dsb_widgets.sweep import is_finished

    folder, text = suite
    cfg = resolve_config(RunConfig(experiment="checkpoints", model=str(folder), dataset=str(text), probe_size=6,
                                   probes=("real", "unigram", "kl_unigram"), options={"context": 12}))
    out = tmp_path / "ck.nc"
    starts: list[int] = []
    events: list[dict] = []
    ds = train(cfg, out=out, subscribers=[events.append]).dataset
    assert ds.attrs["config"] == cfg.to_json() and RunConfig.from_json(ds.attrs["config"]).steps == cfg.steps == 1
    assert int(ds.attrs["final_step"]) == 8 and ds.step.values.tolist() == [0, 1, 2, 4, 8]
    assert load_results(out).attrs["config"] == cfg.to_json()
    start = next(e for e in events if e["type"] == "start")
    assert start["config"].steps == 8  # the live view's x range / progress total: the suite's end
    assert {e["total"] for e in events if e["type"] == "progress"} == {8}
    assert is_finished(out, cfg) and not is_finished(out, cfg.replace(probe_size=7))

    old = load_results(out)  # the form written before final_step existed
    old.attrs["config"] = cfg.replace(steps=8).to_json()
    del old.attrs["final_step"], old.attrs["probe_seeding"]
    write_atomic(old, out)
    assert load_results(out).sizes["step"] == 5 and not is_finished(out, cfg)  # readable; the sweep reruns it
    rerun = train(cfg, out=out, resume=True, subscribers=[lambda e: starts.append(e["step"])
                                                           if e["type"] == "checkpoint" else None])
    assert rerun.status == "finished" and starts == []  # nothing evaluated again
    new = load_results(out)
    assert new.attrs["config"] == cfg.to_json() and int(new.attrs["final_step"]) == 8
    np.testing.assert_array_equal(new.loss.values, ds.loss.values)
    assert is_finished(out, cfg)
    old.attrs["config"] = cfg.replace(steps=8, probe_size=7).to_json()  # another run's old file: refused
    write_atomic(old, out)
    with pytest.raises(ConfigError, match="another config"):
        train(cfg, out=out, resume=True)
