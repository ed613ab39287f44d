"""The clones experiment's training step (``dsb run clones``, engine/clones.py).

Rende, Gerace, Laio, Goldt (NeurIPS 2024) train a BERT on real text and probe it with clones.
These tests pin the engine's training step: batches drawn where the run's generator lives (the
former CPU draws kept exactly), no host reads while sampling or training, and the masked-only
read-out (``head(features(x)[y != -100])``) giving the full read-out's loss and gradients, in
training and in probe evaluation (the same probe loss, accuracy and target sums).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import torch

from dsb_widgets.clones import CloneConfig, load_clones, make_clones, windows
from dsb_widgets.engine.clones import masked_probe_readout, masked_readout_loss
from dsb_widgets.engine.ensemble import ModelStack
from dsb_widgets.engine.evaluate import evaluate_probe, train_loss
from dsb_widgets.engine.loop import _Run, train
from dsb_widgets.engine.task import Probe, RunConfig, build_task, resolve_config
from dsb_widgets.models.bert import IGNORE, Bert, BertConfig, mask_tokens


def _text(n_lines: int = 120, seed: int = 0) -> str:
    """Lines of a noisy cycle a->b->c->d->e (next letter the successor with prob. 0.7)."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n_lines):
        c, out = int(rng.integers(5)), []
        for _ in range(60):
            out.append("abcde"[c])
            c = (c + 1) % 5 if rng.random() < 0.7 else int(rng.integers(5))
        lines.append("".join(out))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def clone_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 2-body clone of a small character corpus (8-token windows), made once for the module."""
    root = tmp_path_factory.mktemp("engine_clones")
    text = root / "cycle.txt"
    text.write_text(_text())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSB_CACHE_DIR", str(root / "cache"))
        torch.set_num_threads(1)
        cfg = CloneConfig(corpus=str(text), layers=(1,), tokenizer="char", context=8, steps=20, batch_size=32,
                          d_embed=16, n_heads=2, chains=8, sweeps=3, burn_in=1, window=0, control=False)
        make_clones(cfg, root / "clones", progress=False)
        yield root / "clones"


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSB_CACHE_DIR", str(tmp_path / "cache"))
    torch.set_num_threads(1)


def _cfg(clone_dir: Path, **kw: object) -> RunConfig:
    base: dict = {"experiment": "clones", "steps": 6, "probe_size": 16, "batch_size": 8, "device": "cpu",
                  "options": {"clones": str(clone_dir), "n_layer": 1, "d_model": 16, "n_head": 2}}
    base.update(kw)
    return resolve_config(RunConfig(**base))


def test_clones_sampler_draws_the_former_batches_on_the_cpu(clone_dir: Path) -> None:
    """The resident-token sampler gives the batches of the former mask_tokens(windows(...)) and
    leaves the generator in the same state: CPU runs are unchanged."""
    from dsb_widgets.data.text import tokenize_corpus

    cfg = _cfg(clone_dir)
    task = build_task(cfg)
    assert task.device_sampling and task.step_loss is masked_readout_loss
    assert task.probe_readout is masked_probe_readout
    ccfg = load_clones(clone_dir).provenance["config"]
    tc = tokenize_corpus(str(clone_dir.parent / "cycle.txt"), tokenizer="char", vocab_size=int(ccfg["vocab_size"]))
    V = tc.vocab_size
    g_new, g_old = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(3):
        x, y = task.sample_batch(g_new, 16)
        x0, y0 = mask_tokens(windows(tc.train, 8, 16, g_old), g_old, V, p=0.15)
        assert x.dtype == y.dtype == torch.int64 and torch.equal(x, x0) and torch.equal(y, y0)
    assert torch.equal(g_new.get_state(), g_old.get_state())


def _stack(n: int, vectorize: bool | None) -> ModelStack:
    cfg = BertConfig(11, 8, n_layer=2, n_head=2, d_model=16)
    models = []
    for s in range(n):
        torch.manual_seed(s)
        models.append(Bert(cfg))
    return ModelStack(models, vectorize=vectorize)


@pytest.mark.parametrize(("seeds", "vectorize"), [(1, False), (3, True), (3, False)])
def test_masked_readout_loss_and_gradients_equal_the_full_readout(seeds: int, vectorize: bool) -> None:
    """head(features(x)[scored]) per seed = cross-entropy on the full logits stack(x): the same loss
    and the same gradient for every parameter (seeds with different numbers of scored positions)."""
    gen = torch.Generator().manual_seed(0)
    xs, ys = zip(*(mask_tokens(torch.randint(0, 11, (6, 8), generator=gen), gen, 11, p=0.3) for _ in range(seeds)))
    x, y = torch.stack(xs), torch.stack(ys)  # (S, B, T)
    assert seeds == 1 or len({int((y[s] != IGNORE).sum()) for s in range(seeds)}) > 1  # padding is exercised
    stack = _stack(seeds, vectorize)
    keys = set(stack.state_dict())
    full = train_loss(stack(x), y)
    g_full = torch.autograd.grad(full.sum(), list(stack.parameters()))
    sparse = masked_readout_loss(stack, x, y)
    g_sparse = torch.autograd.grad(sparse.sum(), list(stack.parameters()))
    assert sparse.shape == (seeds,)
    torch.testing.assert_close(sparse, full, rtol=1e-6, atol=1e-7)
    for a, b in zip(g_full, g_sparse):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    assert set(stack.state_dict()) == keys  # call() adds no state: saved runs load as before


@pytest.mark.parametrize(("seeds", "vectorize"), [(1, False), (3, True), (3, False)])
@pytest.mark.parametrize("style", ["mask", "bert"])
def test_masked_probe_readout_gives_the_full_readout_probe_metrics(seeds: int, vectorize: bool, style: str) -> None:
    """evaluate_probe with the masked-only read-out = with the full logits stack(x): loss, accuracy
    and target loss/accuracy per seed, over several eval batches (the last one short), pure-[MASK]
    and BERT 80/10/10 probe masks; the read-out's rows are the full logits' scored rows in order."""
    gen = torch.Generator().manual_seed(1)
    x, y = mask_tokens(torch.randint(0, 11, (37, 8), generator=gen), gen, 11, p=0.2,
                       **({} if style == "bert" else {"random_frac": 0.0, "keep_frac": 0.0}))
    target = torch.where(y != IGNORE, (y + 3) % 11, y)  # another label at each scored position
    probe = Probe("p", 2.0, x, y, target=target)
    stack = _stack(seeds, vectorize).eval()
    torch.manual_seed(2)
    with torch.no_grad():  # weights far from init: logits that differ by position, accuracies > 0
        for w in stack.parameters():
            w.add_(torch.randn_like(w))
    full = evaluate_probe(stack, probe, torch.device("cpu"), 16, amp=False)
    sparse = evaluate_probe(stack, probe, torch.device("cpu"), 16, amp=False, readout=masked_probe_readout)
    for m in ("loss", "accuracy", "target_loss", "target_accuracy"):
        assert sparse[m].shape == (seeds,)
        np.testing.assert_allclose(sparse[m], full[m], rtol=1e-6, atol=1e-7, err_msg=m)
    assert (full["accuracy"] > 0).all() and (full["target_accuracy"] > 0).all()  # not a vacuous comparison
    with torch.no_grad():
        scored = y != IGNORE
        torch.testing.assert_close(masked_probe_readout(stack, x, scored), stack(x, shared=True)[:, scored],
                                   rtol=1e-5, atol=1e-6)


def test_stack_call_runs_a_method_of_every_seed() -> None:
    """ModelStack.call("features", x) = each seed's own model.features(x[s]), vmapped or looped."""
    x = torch.randint(0, 11, (3, 4, 8))
    loop, vec = _stack(3, False), _stack(3, True)
    ref = torch.stack([m.features(x[s]) for s, m in enumerate(loop.members)])
    torch.testing.assert_close(loop.call("features", x), ref)
    torch.testing.assert_close(vec.call("features", x), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(vec.call("forward", x[0], shared=True), vec(x[0], shared=True))


def test_clones_sampling_and_training_read_nothing_back_to_the_host(
        clone_dir: Path, monkeypatch: pytest.MonkeyPatch, spy_host_reads: Callable[[], list[str]]) -> None:
    """The clones step loop's body (sample, features, masked read-out, loss, backward, SGD step), 2
    seeds: no .item()/.cpu()/.numpy()/bool() per step (each would wait for a GPU). AdamW reads its
    step counter with .item() (a CPU scalar in torch), so SGD is used here, as in test_engine_text."""
    run = _Run(_cfg(clone_dir, optimizer="sgd", seeds=2), None, False)
    gen = torch.Generator().manual_seed(0)
    run.update()  # first step: optimizer state created
    calls = spy_host_reads()
    for _ in range(3):
        run.task.sample_batch(gen, 8)
        run.loss_sum += run.update()
    monkeypatch.undo()
    assert calls == []


def test_clones_run_with_the_masked_readout_matches_the_full_readout_run(clone_dir: Path) -> None:
    """End to end, 2 seeds x 6 AdamW steps: the engine's masked read-out (training step and probe
    evaluation) and the former full read-out (step_loss=None, probe_readout=None) give the same
    training losses, probe losses and probe accuracies."""
    cfg = _cfg(clone_dir, seeds=2, per_octave=2)
    task = build_task(cfg)
    sparse = train(cfg, task=task).dataset
    full = train(cfg, task=dataclasses.replace(task, step_loss=None, probe_readout=None)).dataset
    np.testing.assert_allclose(sparse["train_loss"].values, full["train_loss"].values, rtol=1e-5)
    np.testing.assert_allclose(sparse["loss"].values, full["loss"].values, rtol=1e-5)
    np.testing.assert_allclose(sparse["accuracy"].values, full["accuracy"].values, rtol=1e-5)
    assert np.isfinite(sparse["loss"].values).all() and int(sparse.step.values[-1]) == 6


def test_dsb_run_clones_trains_at_a_constant_rate_by_default(clone_dir: Path) -> None:
    """Regression (found this session): RunConfig.schedule defaulted to "cosine" (and so did
    `--schedule`), so the clones experiment's "constant" default never applied and every
    `dsb run clones` decayed its rate to zero, which flattens curves and fakes saturation.
    From the CLI, with no --schedule: constant for clones, cosine elsewhere; an explicit flag wins."""
    from dsb_widgets.cli import build_parser, config_from_args
    from dsb_widgets.engine.schedule import lr_at

    def cfg(*argv: str) -> RunConfig:
        args = build_parser().parse_args(["run", *argv])
        return resolve_config(config_from_args(args))

    clones = cfg("clones", "--clones", str(clone_dir), "--steps", "100", "--device", "cpu")
    assert clones.schedule == "constant"
    assert lr_at(90, 1e-3, 100, 64, clones.schedule) == pytest.approx(1e-3)  # no decay late in the run
    assert cfg("clones", "--clones", str(clone_dir), "--schedule", "cosine").schedule == "cosine"
    assert cfg("images", "--dataset", "digits").schedule == "cosine"
    assert RunConfig(experiment="images").schedule is None  # unresolved: the experiment decides
