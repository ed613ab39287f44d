"""The text experiment: GPT model, n-gram probes with exact floors, masked-LM batches, learning order."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from dsb_widgets.engine import ConfigError, RunConfig, resolve_config, train
from dsb_widgets.engine.ensemble import ModelStack
from dsb_widgets.engine.text import DEFAULT_PROBES, TEXT_PROBES, build_text_task, setup_text
from dsb_widgets.models.gpt import GPT, GPTConfig

DATA = os.environ.get("DSB_DATA_DIR")
needs_shakespeare = pytest.mark.skipif(
    not DATA or not Path(DATA, "tinyshakespeare", "input.txt").is_file(),
    reason="DSB_DATA_DIR with tinyshakespeare/input.txt is not set",
)
# A small corpus with real bigram structure (alternating syllables) and enough variety for trigrams.
WORDS = ["banana", "papaya", "cocoa", "abba", "cab", "baobab", "acacia"]


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSB_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture()
def corpus_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, size=8)) for _ in range(400)]
    f = tmp_path / "words.txt"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return f


def _cfg(path: Path, model: str = "gpt", context: int = 8, **kw: object) -> RunConfig:
    opts = {"tokenizer": "char", "vocab_size": None, "context": context, "d_model": 32, "n_head": 2, "n_layer": 1}
    opts.update(kw.pop("options", {}))  # type: ignore[arg-type]
    base = dict(experiment="text", dataset=str(path), model=model, probe_size=400, steps=4, batch_size=8)
    base.update(kw)
    return resolve_config(RunConfig(**base, options=opts))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- model


def test_gpt_is_causal_and_vmaps_like_separate_models() -> None:
    cfg = GPTConfig(vocab_size=17, context=12, n_layer=2, n_head=2, d_model=16)
    models = []
    for s in range(2):
        torch.manual_seed(s)
        models.append(GPT(cfg))
    x = torch.randint(0, 17, (3, 12))
    out = models[0](x)  # (B, T, V)
    assert out.shape == (3, 12, 17)
    x2 = x.clone()
    x2[:, 7] = (x2[:, 7] + 1) % 17
    out2 = models[0](x2)
    assert torch.allclose(out[:, :7], out2[:, :7], atol=1e-6)  # the past never sees the future
    assert not torch.allclose(out[:, 7:], out2[:, 7:])  # and the change is seen from t = 7 on
    stacked = ModelStack(models)(x, shared=True)  # (S, B, T, V)
    for s in range(2):
        assert torch.allclose(stacked[s], models[s](x), atol=1e-5)
    with pytest.raises(ValueError, match="--context"):
        models[0](torch.zeros(1, 13, dtype=torch.long))


# --------------------------------------------------------------------------------------- probes


def _oracle_logprobs(dense: list[np.ndarray], k: int, w: np.ndarray) -> np.ndarray:
    """log p(w_t | previous min(t, k-1) tokens) of the order-k chain with back-off, (N, L-1)."""
    n, L = w.shape
    out = np.empty((n, L - 1))
    for t in range(1, L):
        p = dense[0]  # unigram (V,)
        for m in range(min(t, k - 1), 0, -1):  # longest seen context wins (the sampler's back-off)
            ctx = tuple(w[:, t - m + i] for i in range(m))
            joint = dense[m][ctx]  # (N, V) frequencies of (context, next)
            seen = joint.sum(1, keepdims=True) > 0
            if seen.all():
                p = joint / joint.sum(1, keepdims=True)
                break
        out[:, t - 1] = np.log(p[np.arange(n), w[:, t]] if p.ndim == 2 else p[w[:, t]])
    return out


@pytest.mark.parametrize("name,k", [("unigram", 1), ("bigram", 2), ("trigram", 3)])
def test_ngram_probe_floor_equals_the_oracle_loss(corpus_file: Path, name: str, k: int) -> None:
    """The true chain's conditionals score the probe at its floor (positions 1..T, no off-by-one)."""
    cfg = _cfg(corpus_file, probes=(name,), probe_size=3000, context=6)
    task = build_text_task(cfg)
    (probe,) = task.probes
    stats = setup_text(cfg).stats[3]
    dense = [stats.dense(1), stats.dense(2), stats.dense(3)]
    w = torch.cat([probe.x[:, :1], probe.y], 1).numpy()  # (N, T + 1): y is x shifted by one
    assert torch.equal(probe.x[:, 1:], probe.y[:, :-1])
    nll = -_oracle_logprobs(dense, k, w)  # (N, T)
    se = nll.mean(1).std() / math.sqrt(len(nll))
    assert abs(nll.mean() - probe.floor) < 4 * se + 1e-9, (nll.mean(), probe.floor, se)
    if k > 1:  # the test has the power to see an off-by-one: scoring position 0 too (unigram
        # entropy there) would move the floor by (H1 - floor) / (T + 1), many standard errors
        h1 = float(-(dense[0][dense[0] > 0] * np.log(dense[0][dense[0] > 0])).sum())
        t = probe.y.shape[1]
        assert abs((h1 + t * probe.floor) / (t + 1) - probe.floor) > 8 * se


def test_probes_are_deterministic_and_shuffled_pairs_with_real(corpus_file: Path) -> None:
    cfg = _cfg(corpus_file, probes=TEXT_PROBES, probe_size=50)
    a, b = build_text_task(cfg).probes, build_text_task(cfg).probes
    for pa, pb in zip(a, b):
        assert torch.equal(pa.x, pb.x) and torch.equal(pa.y, pb.y) and pa.name == pb.name
    other = build_text_task(cfg.replace(seed=1)).probes
    assert not torch.equal(a[1].x, other[1].x)
    by = {p.name: p for p in a}
    real = torch.cat([by["real"].x[:, :1], by["real"].y], 1)
    shuf = torch.cat([by["shuffled"].x[:, :1], by["shuffled"].y], 1)
    assert torch.equal(real.sort(1).values, shuf.sort(1).values)  # same bag of tokens per window
    assert not torch.equal(real, shuf)
    assert by["shuffled"].order == 1.0 and math.isinf(by["real"].order)
    assert math.isnan(by["real"].floor) and by["unigram"].floor > by["bigram"].floor > by["trigram"].floor


def test_train_batches_are_train_windows(corpus_file: Path) -> None:
    cfg = _cfg(corpus_file)
    task = build_text_task(cfg)
    x, y = task.sample_batch(torch.Generator().manual_seed(0), 5)
    assert x.shape == y.shape == (5, 8) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    train = setup_text(cfg).corpus.train
    text = "".join(map(chr, train + 1000))  # substring search over token ids
    for row in torch.cat([x[:, :1], y], 1).numpy():
        assert "".join(map(chr, row + 1000)) in text


def test_bert_batches_mask_fifteen_percent(corpus_file: Path) -> None:
    cfg = _cfg(corpus_file, model="bert", context=16)
    task = build_text_task(cfg)
    v = int(task.info["vocab_size"])
    x, y = task.sample_batch(torch.Generator().manual_seed(0), 2000)
    scored = y != -100
    assert x.shape == y.shape == (2000, 16)
    assert abs(scored.float().mean().item() - 0.15) < 0.02  # p = 0.15 (+ at least one per row)
    assert ((x == v) == (scored & (x == v))).all() and 0.75 < (x[scored] == v).float().mean() < 0.85
    assert all(math.isnan(p.floor) for p in task.probes) and task.info["objective"] == "masked LM"
    res = train(cfg.replace(steps=2, probe_size=16))
    assert np.isfinite(res.dataset["loss"].values).all()


# ----------------------------------------------------------------------------------- validation


def test_bad_text_configs_fail_with_one_line_fixes(corpus_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--corpus"):
        _cfg(tmp_path / "nope.txt")
    with pytest.raises(ConfigError, match="--tokenizer"):
        _cfg(corpus_file, options={"tokenizer": "bpe9"})
    with pytest.raises(ConfigError, match="n_head"):
        _cfg(corpus_file, options={"d_model": 30, "n_head": 4})
    with pytest.raises(ConfigError, match="--context"):
        build_text_task(_cfg(corpus_file, context=100_000))


def test_end_to_end_results_carry_floors_and_units(corpus_file: Path) -> None:
    res = train(_cfg(corpus_file, steps=3, probe_size=20))
    ds = res.dataset
    assert list(ds.probe.values) == list(DEFAULT_PROBES)  # the defaults; `shuffled` is opt-in (--probes)
    assert ds.attrs["units"] == "nats/token" and ds.attrs["bytes_per_token"] == pytest.approx(1.0)
    floors = ds["floor"].values
    assert math.isnan(floors[0]) and np.all(np.diff(floors[1:4]) < 0)  # real: none; n-gram floors fall with n


# ----------------------------------------------------------------------------------- learning order


def shakespeare_order_run() -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, float]]:
    """Char-level GPT on Tiny Shakespeare: (mean loss per probe, steps, floors)."""
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    cfg = RunConfig(experiment="text", dataset="tinyshakespeare", data_dir=DATA, steps=160, batch_size=16,
                    lr=3e-3, warmup=8, probe_size=64, per_octave=3, probes=("real", "unigram", "bigram"),
                    options={"tokenizer": "char", "vocab_size": None, "context": 32, "d_model": 64,
                             "n_head": 2, "n_layer": 2})
    ds = train(cfg).dataset
    loss = ds["loss"].mean("seed")
    return ({str(p): loss.sel(probe=p).values for p in ds.probe.values}, ds.step.values,
            {str(p): float(f) for p, f in zip(ds.probe.values, ds["floor"].values)})


@needs_shakespeare
@pytest.mark.slow
def test_unigrams_are_learned_before_bigrams_on_shakespeare() -> None:
    """Belrose et al. Sec. 5: the unigram-probe minimum comes no later than the bigram one, both
    probes' losses rise after their minima, and the real-text loss still falls at the end."""
    t0 = time.perf_counter()
    loss, steps, floors = shakespeare_order_run()
    i_uni, i_bi = int(np.argmin(loss["unigram"])), int(np.argmin(loss["bigram"]))
    assert steps[i_uni] <= steps[i_bi], (steps[i_uni], steps[i_bi])
    assert loss["unigram"][-1] > loss["unigram"][i_uni] + 0.2  # rises well past its minimum
    assert loss["real"][-1] < loss["real"][-2] and int(np.argmin(loss["real"])) == len(steps) - 1
    assert loss["unigram"][i_uni] > floors["unigram"] and loss["bigram"][i_bi] > floors["bigram"]
    print(f"unigram min {loss['unigram'][i_uni]:.3f} @ {steps[i_uni]} (floor {floors['unigram']:.3f}); "
          f"bigram min {loss['bigram'][i_bi]:.3f} @ {steps[i_bi]} (floor {floors['bigram']:.3f}); "
          f"{time.perf_counter() - t0:.1f}s")


# ------------------------------------------------------------------- device-resident sampling (issue 17)
def _former_sampler(cfg: RunConfig, gen: torch.Generator, bs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The text sampler before the tokens moved into a tensor: starts on the generator, NumPy gather."""
    from dsb_widgets.engine.text import _split_xy, windows

    setup = setup_text(cfg)
    hi = setup.corpus.train.size - setup.window + 1
    starts = torch.randint(hi, (bs,), generator=gen).numpy()
    return _split_xy(windows(setup.corpus.train, starts, setup.window), setup, gen, 0.15)


@pytest.mark.parametrize("model", ["gpt", "bert"])
def test_resident_sampler_draws_the_former_batches(corpus_file: Path, model: str) -> None:
    """Same generator -> the very batches (and generator state) of the former NumPy sampler: CPU runs'
    streams are unchanged; both tasks sample on the run's device (BERT's masks too)."""
    cfg = _cfg(corpus_file, model=model, context=8)
    task = build_text_task(cfg)
    assert task.device_sampling
    g_new, g_old = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for _ in range(3):
        x, y = task.sample_batch(g_new, 16)
        x0, y0 = _former_sampler(cfg, g_old, 16)
        assert x.dtype == y.dtype == torch.int64 and torch.equal(x, x0) and torch.equal(y, y0)
    assert torch.equal(g_new.get_state(), g_old.get_state())


def test_window_starts_are_uniform_over_the_train_split(corpus_file: Path) -> None:
    cfg = _cfg(corpus_file, context=8)
    setup = setup_text(cfg)
    task = build_text_task(cfg)
    x, _ = task.sample_batch(torch.Generator().manual_seed(0), 20_000)
    train = torch.from_numpy(setup.corpus.train.astype(np.int64))
    hi = train.numel() - setup.window + 1
    first = x[:, 0]  # the token at each window's start
    freq = torch.bincount(first, minlength=setup.vocab_size).double() / len(first)
    expected = torch.bincount(train[:hi], minlength=setup.vocab_size).double() / hi
    assert (freq - expected).abs().max() < 0.02  # token frequencies at the window start = the corpus's


def test_same_seed_same_text_run(corpus_file: Path) -> None:
    cfg = _cfg(corpus_file, steps=6, probe_size=20, seeds=2)
    a, b = train(cfg).dataset, train(cfg).dataset
    np.testing.assert_array_equal(a["loss"].values, b["loss"].values)
    np.testing.assert_array_equal(a["train_loss"].values, b["train_loss"].values)
    c = train(cfg.replace(seed=1)).dataset
    assert not np.array_equal(a["train_loss"].values[1:], c["train_loss"].values[1:])


@pytest.mark.parametrize("model", ["gpt", "bert"])
def test_text_sampling_reads_nothing_back_to_the_host(corpus_file: Path, model: str,
                                                      monkeypatch: pytest.MonkeyPatch,
        spy_host_reads: Callable[[], list[str]]) -> None:
    task = build_text_task(_cfg(corpus_file, model=model, context=8))
    gen = torch.Generator().manual_seed(0)
    calls = spy_host_reads()
    for _ in range(3):
        task.sample_batch(gen, 8)
    monkeypatch.undo()
    assert calls == []  # windows and BERT's masks are drawn where the generator lives


def test_training_steps_read_nothing_back_to_the_host(corpus_file: Path, monkeypatch: pytest.MonkeyPatch,
        spy_host_reads: Callable[[], list[str]]) -> None:
    """The step loop's body (sample, forward, loss, backward, SGD step) on a text task, 2 seeds: no
    .item()/.cpu()/.numpy()/bool() per step (on a GPU each would wait for the device). AdamW reads
    its step counter with .item(), a CPU scalar as in torch (no device sync), so SGD is used here."""
    from dsb_widgets.engine.loop import _Run

    run = _Run(_cfg(corpus_file, optimizer="sgd", seeds=2, steps=8), None, False)
    run.update()  # first step: optimizer state created
    calls = spy_host_reads()
    for _ in range(3):
        run.loss_sum += run.update()
    monkeypatch.undo()
    assert calls == []


def test_symmetry_fixed_training_set_is_sampled_without_host_reads(monkeypatch: pytest.MonkeyPatch,
        spy_host_reads: Callable[[], list[str]]) -> None:
    """engine/symmetry.py with -o train_size=P: the set is resident on the run's device, indices drawn
    from the generator there; on CPU the draws are the former ones (x_all[randint(P, (B,))])."""
    from dsb_widgets.engine.symmetry import _contexts, build_symmetry_task, make_targets

    cfg = resolve_config(RunConfig(experiment="symmetry", steps=4, probe_size=16, options={"train_size": 50}))
    task = build_symmetry_task(cfg)
    assert task.device_sampling
    x_all, y_all = _contexts(make_targets(cfg), 50, cfg.seed)
    gen, ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    calls = spy_host_reads()
    x, y = task.sample_batch(gen, 32)
    monkeypatch.undo()
    assert calls == []
    idx = torch.randint(50, (32,), generator=ref)
    assert torch.equal(x, x_all[idx]) and torch.equal(y, y_all[idx])


@pytest.mark.parametrize("feature", ["linear", "hermite2"])
def test_symmetry_online_targets_are_computed_on_the_device_and_equal_numpy(feature: str,
        monkeypatch: pytest.MonkeyPatch, spy_host_reads: Callable[[], list[str]]) -> None:
    """Online symmetry runs (fresh contexts every step): contexts and their targets are made on the
    generator's device with no host read, and on CPU the float32 targets equal the NumPy formula
    (sn_sectors.SectorTargets.__call__) bitwise, contexts equal the former torch.randn draws."""
    from dsb_widgets.engine.symmetry import build_symmetry_task, make_targets

    cfg = resolve_config(RunConfig(experiment="symmetry", steps=4, probe_size=16,
                                   options={"feature": feature}))
    task = build_symmetry_task(cfg)
    assert task.device_sampling
    gen, ref = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    calls = spy_host_reads()
    x, y = task.sample_batch(gen, 4096)
    monkeypatch.undo()
    assert calls == []
    o = cfg.options
    x_ref = torch.randn(4096, int(o.get("context", x.shape[1])), x.shape[2], generator=ref, dtype=torch.float64)
    assert torch.equal(x, x_ref.float())
    y_ref = torch.from_numpy(make_targets(cfg)(x_ref.numpy())).float()
    assert torch.equal(y, y_ref) and y.std().item() > 0.5  # unit-variance targets, not zeros


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_text_batches_are_drawn_on_the_gpu(corpus_file: Path) -> None:
    task = build_text_task(_cfg(corpus_file, context=8, device="cuda"))
    x, y = task.sample_batch(torch.Generator(device="cuda").manual_seed(0), 8)
    assert x.is_cuda and y.is_cuda and torch.equal(x[:, 1:], y[:, :-1])
    x, _ = task.sample_batch(torch.Generator().manual_seed(0), 8)  # the engine's CPU example batch
    assert x.is_cuda
