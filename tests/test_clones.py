"""BERT masked LM, clone making (``dsb clone``) and the clones experiment (``dsb run clones``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from dsb_widgets.cli import main
from dsb_widgets.clones import CloneConfig, load_clones, make_clones, train_factored, windows
from dsb_widgets.engine.ensemble import ModelStack
from dsb_widgets.engine.task import ConfigError, RunConfig
from dsb_widgets.factored_attention import (
    FactoredAttention,
    FactoredAttentionConfig,
    IncrementalConditionals,
    pseudo_likelihood_loss,
    random_sites,
)
from dsb_widgets.mh_sampler import metropolis_hastings
from dsb_widgets.models.bert import IGNORE, Bert, BertConfig, mask_tokens
from dsb_widgets.saturation import saturation_step

DATA = os.environ.get("DSB_DATA_DIR")
needs_data = pytest.mark.skipif(
    not DATA or not Path(DATA, "tinystories").is_dir() or not Path(DATA, "tokenizers", "gpt2").is_dir(),
    reason="DSB_DATA_DIR with tinystories/ and tokenizers/gpt2/ is not set",
)
CYCLE = "abcde"


@pytest.fixture(autouse=True)
def _setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSB_CACHE_DIR", str(tmp_path / "cache"))
    torch.set_num_threads(1)


def cycle_text(n_lines: int = 120, seed: int = 0, p: float = 0.7) -> str:
    """Lines of a noisy cycle: the next char is the successor in a->b->c->d->e->a with prob. p,
    else uniform; a 2-body statistic (neighbour pairs follow the cycle ~p + (1-p)/5 of the time)."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n_lines):
        c, out = int(rng.integers(5)), []
        for _ in range(60):
            out.append(CYCLE[c])
            c = (c + 1) % 5 if rng.random() < p else int(rng.integers(5))
        lines.append("".join(out))
    return "\n".join(lines) + "\n"


def follow_fraction(s: torch.Tensor) -> float:
    """Fraction of neighbouring letter pairs (ids 1..5 = a..e; 0 = newline) that follow the cycle."""
    letters = (s[:, :-1] > 0) & (s[:, 1:] > 0)
    return float((((s[:, 1:] - s[:, :-1]) % 5 == 1)[letters]).float().mean())


# ---------------------------------------------------------------------------------------- BERT
def test_bert_shapes_bidirectional_and_vmap_equal_members() -> None:
    cfg = BertConfig(vocab_size=30, context=12, n_layer=2, n_head=2, d_model=16)
    torch.manual_seed(0)
    models = [Bert(cfg) for _ in range(3)]
    x = torch.randint(0, 31, (5, 12))  # includes the mask id 30
    stacked = ModelStack(models)(x, shared=True)  # (3, 5, 12, 30)
    assert stacked.shape == (3, 5, 12, 30)
    for i, m in enumerate(models):
        torch.testing.assert_close(stacked[i], m(x), rtol=1e-5, atol=1e-5)
    x2 = x.clone()
    x2[:, -1] = (x2[:, -1] + 1) % 30  # a change at the last position reaches the first (not causal)
    assert not torch.allclose(models[0](x2)[:, 0], models[0](x)[:, 0])
    with pytest.raises(ValueError, match="T <= 12"):
        models[0](torch.zeros(2, 13, dtype=torch.long))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 40), st.integers(1, 30), st.floats(0.05, 1.0), st.integers(0, 10_000))
def test_mask_tokens_labels_and_at_least_one_per_row(B: int, T: int, p: float, seed: int) -> None:
    x = torch.randint(0, 50, (B, T), generator=torch.Generator().manual_seed(seed))
    xm, lab = mask_tokens(x, torch.Generator().manual_seed(seed + 1), mask_id=50, p=p)
    scored = lab != IGNORE
    assert scored.any(dim=1).all()  # every row is scored somewhere
    assert torch.equal(lab[scored], x[scored])  # labels are the original tokens
    assert torch.equal(xm[~scored], x[~scored])  # unselected positions are untouched
    assert int(xm.max()) <= 50 and int(xm.min()) >= 0


def _former_mask_tokens(x: torch.Tensor, gen: torch.Generator, mask_id: int, p: float = 0.15
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """models/bert.mask_tokens before it drew on the generator's device (x copied to the CPU)."""
    B, T = x.shape
    u = torch.rand(B, T, generator=gen)
    selected = u < p
    selected[torch.arange(B), u.argmin(dim=1)] = True
    kind = torch.rand(B, T, generator=gen)
    rand_tok = torch.randint(0, mask_id, (B, T), generator=gen)
    x = x.cpu()
    replaced = torch.where(kind < 0.8, torch.full_like(x, mask_id), torch.where(kind < 0.9, rand_tok, x))
    return torch.where(selected, replaced, x), torch.where(selected, x, torch.full_like(x, IGNORE))


def test_mask_tokens_draws_the_former_masks_on_the_cpu() -> None:
    """Drawing on the generator's device (no x.cpu()) keeps CPU streams: same masks, same state after."""
    for seed in range(5):
        x = torch.randint(0, 50, (7, 11), generator=torch.Generator().manual_seed(seed))
        g_new, g_old = torch.Generator().manual_seed(seed + 1), torch.Generator().manual_seed(seed + 1)
        for got, want in zip(mask_tokens(x, g_new, 50), _former_mask_tokens(x, g_old, 50)):
            assert torch.equal(got, want)
        assert torch.equal(g_new.get_state(), g_old.get_state())


def test_mask_tokens_80_10_10_proportions() -> None:
    x = torch.randint(0, 100, (400, 250), generator=torch.Generator().manual_seed(0))
    xm, lab = mask_tokens(x, torch.Generator().manual_seed(1), mask_id=100, p=0.15)
    sel = lab != IGNORE
    n = int(sel.sum())
    assert abs(n / x.numel() - 0.15) < 0.005
    masked = (xm[sel] == 100).float().mean()
    kept = (xm[sel] == x[sel]).float().mean()  # 10% kept + 1% random that hit the same token
    assert abs(float(masked) - 0.8) < 0.01 and abs(float(kept) - 0.101) < 0.01
    pure, _ = mask_tokens(x, torch.Generator().manual_seed(1), mask_id=100, p=0.15, random_frac=0, keep_frac=0)
    assert torch.equal(pure == 100, lab != IGNORE)


# -------------------------------------------------------------------------------- clone making
def test_stochastic_pll_with_every_site_is_the_pseudo_likelihood() -> None:
    """Training's site-subset loss (L >= 3) scores the same conditionals as the full PLL."""
    torch.manual_seed(0)
    model = FactoredAttention(FactoredAttentionConfig(vocab_size=9, seq_len=5, n_layers=3, n_heads=2, d_embed=8))
    s = torch.randint(0, 9, (6, 5))
    every = random_sites(6, 5, 5, torch.Generator().manual_seed(1))
    torch.testing.assert_close(pseudo_likelihood_loss(model, s, every), pseudo_likelihood_loss(model, s))
    one = pseudo_likelihood_loss(model, s, random_sites(6, 5, 1, torch.Generator().manual_seed(1)))
    assert not torch.allclose(one, pseudo_likelihood_loss(model, s))


def test_three_layers_train_on_the_exact_pll_by_default() -> None:
    """max_sites = 0 (the default) scores every site at L >= 3, exactly as max_sites = context does;
    a 1-site estimate trains another model. (TinyStories: 4 of 16 sites left 3 layers 0.012 nats
    WORSE than one layer trained as long; every site: 0.086 better; clones.py docstring.)"""
    from dsb_widgets.data.tokenizers import CharTokenizer

    assert CloneConfig(corpus="x").max_sites == 0
    with pytest.raises(ValueError, match="--max-sites"):
        CloneConfig(corpus="x", max_sites=-1)
    text = cycle_text()
    stream = CharTokenizer.from_text(text).encode(text).astype(np.int32)

    def fit(max_sites: int) -> torch.Tensor:
        cfg = CloneConfig(corpus="x", layers=(3,), tokenizer="char", vocab_size=6, context=6, steps=8,
                          batch_size=16, lr=0.03, d_embed=8, n_heads=2, max_sites=max_sites, eval_windows=32)
        torch.manual_seed(0)
        model, _ = train_factored(stream, stream, 3, cfg, 6, progress=False)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    exact = fit(0)
    torch.testing.assert_close(exact, fit(6))
    assert not torch.allclose(exact, fit(1))


def test_windows_are_slices_of_the_stream() -> None:
    stream = np.arange(100, dtype=np.int32)
    w = windows(stream, 8, 50, torch.Generator().manual_seed(0))
    assert w.shape == (50, 8) and w.dtype == torch.int64
    assert torch.equal(w - w[:, :1], torch.arange(8).expand(50, 8))  # consecutive tokens
    assert torch.equal(windows(stream, 8, None, torch.Generator()), torch.arange(96).view(12, 8))
    with pytest.raises(ValueError, match="--context"):
        windows(stream[:5], 8, 1, torch.Generator())


def test_two_body_clone_matches_pair_statistics_from_random_starts() -> None:
    """A 1-layer (2-body) factored model trained on the noisy cycle, sampled by MH from uniformly
    random sequences, reproduces the real neighbour statistic (measured: real 0.757, clone 0.757
    after 12 sweeps; an untrained model gives the chance level 0.2)."""
    from dsb_widgets.data.tokenizers import CharTokenizer

    text = cycle_text()
    tok = CharTokenizer.from_text(text)
    stream = tok.encode(text).astype(np.int32)
    q = tok.vocab_size  # 6: '\n' + abcde
    real = follow_fraction(windows(stream, 8, None, torch.Generator()))
    cfg = CloneConfig(corpus="x", layers=(1,), tokenizer="char", vocab_size=q, context=8, steps=200,
                      batch_size=64, lr=0.03, d_embed=16, n_heads=2)
    model, losses = train_factored(stream, stream, 1, cfg, q, progress=False)
    assert losses["test_pll"] < 0.9  # ln 5 = 1.61 without the neighbours
    init = torch.randint(1, q, (64, 8), generator=torch.Generator().manual_seed(0))
    res = metropolis_hastings(IncrementalConditionals(model), init, n_sweeps=12, burn_in=8,
                              generator=torch.Generator().manual_seed(1))
    assert follow_fraction(init) < 0.3
    assert abs(follow_fraction(res.samples.reshape(-1, 8)) - real) < 0.08
    assert 0.0 < res.acceptance_rate <= 1.0


def _clone_cmd(corpus: str, out: Path, *extra: str) -> list[str]:
    return ["clone", "--corpus", corpus, "--layers", "1", "2", "--out", str(out), "--tokenizer", "char",
            "--context", "8", "--steps", "40", "--batch-size", "32", "--d-embed", "16", "--heads", "2",
            "--sweeps", "3", "--burn-in", "1", "--window", "0", "--chains", "8", "--temperatures", "1", *extra]


def test_clone_then_run_clones_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """dsb clone on a tmp text file -> files + provenance; dsb run clones -> xarray results."""
    text = tmp_path / "cycle.txt"
    text.write_text(cycle_text())
    out = tmp_path / "clones"
    assert main(_clone_cmd(str(text), out)) == 0
    prov = json.loads((out / "provenance.json").read_text())
    for L, bodies in ((1, 2), (2, 3)):
        rec = prov["orders"][str(L)]
        assert rec["layers"] == L and rec["bodies"] == bodies and rec["sweeps"] == 3 and rec["burn_in"] == 1
        assert len(rec["acceptance_per_sweep"]) == 3 and 0 < rec["acceptance_rate"] <= 1
        assert rec["n_sequences"] == 8 * 2 and rec["chain_tokens_per_second"] > 0
        blob = torch.load(out / f"clone_L{L}.pt", weights_only=True)
        assert blob["tokens"].shape == (16, 8) and blob["bodies"] == bodies
        assert blob["energies"].shape == (4, 8)  # the per-chain energy trace, start + 3 sweeps
    # growth + its control: L = 2 trained 2 cycles from L = 1; the control is L = 1 trained as long
    assert prov["orders"]["1"]["total_steps"] == 40 and "control" not in prov["orders"]["1"]
    assert prov["orders"]["2"]["total_steps"] == 80 and prov["orders"]["2"]["grown_from_layers"] == 1
    ctl = prov["orders"]["2"]["control"]
    assert ctl["layers"] == 1 and ctl["total_steps"] == 80 and np.isfinite(ctl["test_pll"])
    saved = torch.load(out / "model_L2.pt", weights_only=True)  # the factored model behind the clone
    model = FactoredAttention(FactoredAttentionConfig(**saved["config"]))
    model.load_state_dict(saved["state_dict"])
    assert model.cfg.n_layers == 2 and model.cfg.vocab_size == 7
    clones = load_clones(out)
    assert set(clones.decode(clones.tokens[1][0])) <= set(CYCLE + "\n")
    assert prov["corpus"] == str(text) and prov["vocab_size"] == 7 and prov["seed"] == 0

    res = tmp_path / "run.nc"
    assert main(["run", "clones", "--corpus", str(text), "--clones", str(out), "--steps", "8",
                 "--probe-size", "16", "--batch-size", "8", "--out", str(res)]) == 0
    ds = xr.open_dataset(res, engine="scipy")
    assert list(ds.probe.values) == ["real", "2-body", "3-body"]
    assert list(ds.probe_order.values) == [np.inf, 2.0, 3.0]
    assert int(ds.step.values[-1]) == 8 and np.isfinite(ds.loss.values).all()
    assert abs(float(ds.loss.isel(step=0).mean()) - np.log(7)) < 0.3  # untrained: ~uniform over V = 7 (6 chars + <unk>)
    assert json.loads(ds.attrs["config"])["options"]["clones"] == str(out)
    ds.close()


def test_clone_runs_until_stationary_and_records_the_trace(tmp_path: Path) -> None:
    """With the adaptive window the chains stop once split-R-hat < 1.05 and the drift test pass over
    W = max(window, 20 tau); provenance keeps the criterion, tau, W, every check, acceptance and
    change rate per sweep; the clone file keeps the per-chain energy trace and the last W sweeps."""
    text = tmp_path / "cycle.txt"
    text.write_text(cycle_text())
    cfg = CloneConfig(corpus=str(text), layers=(1,), tokenizer="char", context=8, steps=100, batch_size=64, lr=0.03,
                      d_embed=16, n_heads=2, chains=32, sweeps=400, window=10, temperatures=1, control=False)
    rec = make_clones(cfg, tmp_path / "c", progress=False)["orders"]["1"]
    st = rec["stationarity"]
    assert st["stationary"] and st["rhat"] < 1.05 and abs(st["drift"]) < 2 * st["drift_se"]
    assert st["window"] >= max(10, 20 * st["tau"]) and st["history"][-1]["sweeps"] == rec["sweeps"] < 400
    assert "20 tau" in rec["stationarity_criterion"] and "sample_cpu_seconds" in rec  # recorded (not timed here)
    assert len(rec["acceptance_per_sweep"]) == len(rec["change_rate_per_sweep"]) == rec["sweeps"]
    blob = torch.load(tmp_path / "c" / "clone_L1.pt", weights_only=True)
    assert blob["energies"].shape == (rec["sweeps"] + 1, 32) and blob["tokens"].shape == (st["window"] * 32, 8)
    # generative consistency: the kept window's mean E_pll vs the held-out windows' (= T x test PLL)
    assert rec["heldout_energy_mean"] == pytest.approx(8 * rec["test_pll"])
    assert rec["chain_energy_mean"] == pytest.approx(float(blob["energies"][-st["window"]:].double().mean()))
    assert rec["energy_gap"] == pytest.approx(rec["chain_energy_mean"] - rec["heldout_energy_mean"])


def test_clone_with_tempering_keeps_the_beta_one_chains(tmp_path: Path) -> None:
    """--temperatures 2: 16 chains split over beta = 1, 0.5; the clone and the trace are the 8 beta = 1
    chains; the ladder and the swap rate per sweep are recorded."""
    text = tmp_path / "cycle.txt"
    text.write_text(cycle_text())
    cfg = CloneConfig(corpus=str(text), layers=(1,), tokenizer="char", context=8, steps=20, batch_size=32, d_embed=16,
                      n_heads=2, chains=16, sweeps=6, window=3, temperatures=2, beta_min=0.5, control=False)
    rec = make_clones(cfg, tmp_path / "c", progress=False)["orders"]["1"]
    assert rec["betas"] == [1.0, 0.5] and rec["chains_at_target"] == 8 and len(rec["swap_rate_per_sweep"]) == 6
    assert len(rec["tempering"]["swap_rate_per_pair"]) == 1 and len(rec["tempering"]["tau_per_temperature"]) == 2
    blob = torch.load(tmp_path / "c" / "clone_L1.pt", weights_only=True)
    assert blob["energies"].shape == (7, 8) and blob["tokens"].shape[0] % 8 == 0
    with pytest.raises(ValueError, match="--temperatures"):
        CloneConfig(corpus="x", chains=10, temperatures=3)


def test_run_clones_errors_name_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "clones", "--corpus", "x", "--clones", str(tmp_path / "none"), "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "dsb clone" in err and len(err.strip().splitlines()) == 1
    assert main(["run", "clones", "--steps", "2"]) == 2
    assert "dsb clone" in capsys.readouterr().err
    assert main(["clone", "--corpus", "x", "--layers", "0", "--out", str(tmp_path)]) == 2
    assert "--layers" in capsys.readouterr().err


def test_run_clones_rejects_a_corpus_with_another_vocabulary(tmp_path: Path) -> None:
    from dsb_widgets.engine.loop import train

    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(cycle_text())
    b.write_text("".join("xyz"[i % 3] * 30 + "\n" for i in range(60)))
    assert main(_clone_cmd(str(a), tmp_path / "cl")) == 0
    cfg = RunConfig(experiment="clones", dataset=str(b), steps=2, probe_size=8,
                    options={"clones": str(tmp_path / "cl")})
    with pytest.raises(ConfigError, match="another vocabulary"):
        train(cfg)
    with pytest.raises(ConfigError, match="9-body"):
        train(cfg.replace(dataset=str(a), probes=("real", "9-body")))


def test_saturation_step() -> None:
    steps = np.array([0, 1, 2, 4, 8, 16, 32])
    assert saturation_step(steps, np.array([5.0, 4.0, 3.0, 2.0, 2.0, 2.01, 2.0])) == 4
    assert saturation_step(steps, np.array([5.0, 4.5, 4.0, 3.5, 3.0, 2.5, 2.0])) == 32


def test_format_saturation_names_the_plateau_and_the_still_falling_curve() -> None:
    """``dsb run clones`` prints, per probe, the step where its loss stops improving."""
    from dsb_widgets.engine.clones import format_saturation

    steps = [0, 1, 2, 4, 8, 16, 32]
    loss = np.array([[5.0, 4.0, 3.0, 2.0, 2.0, 2.01, 2.0],    # flat from step 4
                     [5.0, 4.5, 4.0, 3.5, 3.0, 2.5, 2.0]])[None]  # falls to the end
    ds = xr.Dataset({"loss": (("seed", "probe", "step"), loss)},
                    coords={"seed": [0], "probe": ["3-body", "real"], "step": steps})
    three, real = format_saturation(ds).splitlines()[1:]
    assert "3-body" in three and "step       4" in three and "still falling" not in three
    assert "real" in real and "step      32" in real and "still falling" in real


@needs_data
@pytest.mark.slow
def test_tinystories_clones_small(tmp_path: Path) -> None:
    """Real TinyStories (GPT-2 BPE, top 200 tokens): clones of 2 and 3 bodies, then the BERT."""
    out = tmp_path / "ts"
    assert main(["clone", "--corpus", "tinystories", "--layers", "1", "2", "--out", str(out), "--vocab-size", "200",
                 "--context", "8", "--steps", "60", "--chains", "16", "--sweeps", "3", "--burn-in", "1",
                 "--window", "0", "--d-embed", "32"]) == 0
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["vocab_size"] == 200 and "tinystories" in prov["source"]
    for rec in prov["orders"].values():
        assert rec["test_pll"] < np.log(200)  # better than uniform
        assert rec["fraction_changed_from_init"] > 0.3  # the chains left the real sentences
    res = tmp_path / "r.nc"
    assert main(["run", "clones", "--clones", str(out), "--steps", "16", "--probe-size", "32", "--out", str(res)]) == 0
    ds = xr.open_dataset(res, engine="scipy")
    assert list(ds.probe.values) == ["real", "2-body", "3-body"]
    assert float(ds.loss.isel(step=-1).sel(probe="real").mean()) < float(ds.loss.isel(step=0).sel(probe="real").mean())
    ds.close()
