"""The clones experiment: a BERT trained on real text, probed with clones of increasing order.

Rende, Gerace, Laio, Goldt (NeurIPS 2024), Sec. 4: a BERT-style masked LM trained on the real
corpus first fits the low-order clones of it (samples of L-layer factored-attention models,
2^(L-1)+1 bodies, made by ``dsb clone``, :mod:`dsb_widgets.clones`): its loss on the 3- and
9-body TinyStories clones saturates after ~3e4 steps while the loss on the 33-body clone and on
real text keeps falling.

========== ========= ===========================================================================
probe      order     what it keeps
========== ========= ===========================================================================
real       inf       held-out test windows of the corpus
N-body     N         MH samples of an L-layer factored MLM, N = 2^(L-1)+1 (from ``--clones DIR``)
========== ========= ===========================================================================

Every probe is masked once (fixed by ``cfg.seed``): ``mask_prob`` of the positions (at least one
per window) replaced by the mask token; the loss is the mean -log p(s_i | rest) over the masked
positions, in nats/token. Probe masks are pure [MASK] tokens (``-o probe_mask=bert`` uses BERT's
80/10/10 as in training), so the loss is the model's conditional on that position alone.

The corpus, tokenizer, vocabulary and context come from the clone folder's provenance: the BERT
must read the same token ids the clones were written in (checked token by token; a mismatch is
a one-line error). ``--corpus`` may be left out (the clones' corpus is used).

Training step: BERT's 80/10/10 masks at ``mask_prob`` on uniformly placed train windows, drawn on
the run's device (:func:`train_sampler`: tokens resident there, starts and masks from the run's
generator; on a CPU the former draws exactly); on a CPU only the masked positions go through
the read-out (:func:`masked_readout_loss`: the same loss and gradients as the full logits, 20 vs
30 CPU-ms per step at the defaults, ``benchmarks/clone_saturation/bench_readout.py``; a GPU keeps
the full read-out, which needs no host sync).

Probe evaluation: only the scored positions go through the read-out and the cross-entropy, on
every device (:func:`masked_probe_readout`, ``Task.probe_readout``: the probe's scored rows are
fixed and known on the CPU, so gathering them needs no host sync). The same probe losses and
accuracies as the full (B, T, V) logits (tests/test_engine_clones.py; identical to the last bit
on the TinyStories clones below); 0.50 vs 1.24 CPU-s per evaluation of the 4 probes (1,280
windows each, 1 seed, after 200 steps), 2.5x fewer, side by side at load ~6 on 2 cores
(``benchmarks/clone_saturation/bench_probe_readout.py``).

Sizes (options ``n_layer``, ``n_head``, ``d_model``, ``mask_prob``): a 2 x 64 BERT; the default
60,000 steps take ~21 CPU-min per seed on one thread, probe evaluation ~5% (``--steps 2048`` for a
quick look, which is too short for any probe to saturate). The schedule is warm-up then a CONSTANT rate
(``--schedule constant``, the default here): a cosine decay to zero flattens every curve at its
end and fakes saturation.

Saturation (:mod:`dsb_widgets.saturation`: :func:`saturation_step`, printed per probe by ``dsb run clones``,
:func:`format_saturation`): the first checkpoint t after which the loss, as a centred running mean
over half an octave of checkpoints (m_i, n_i points), never falls again by more than
k = 3 s.d. of a difference: m_i - m_j <= k sigma sqrt(1/n_i + 1/n_j) for all j > i. sigma is the
curve's own checkpoint-to-checkpoint noise (:func:`curve_noise`: 1.4826 median|second
difference| / sqrt(6) over the second half of the run), or a given eval standard error. A
plateau counts only if the run went on to at least 2t (:func:`plateau_observed`); otherwise the
probe is "still falling at N". The rule is tested on curves with known answers
(tests/test_clone_saturation.py): for a + b exp(-t / tau) + noise it stops where the remaining
drop is within a few sigma; a power law still falling 3 sigma per octave is never called flat.

Measured through this engine (``dsb run clones --clones DIR --seed S --seeds 1 --threads 1``,
seeds 0 and 1 as two processes, each with its own probe sets). CAVEAT: that run decayed its rate
by a COSINE to zero, not the constant rate documented below: ``RunConfig.schedule`` and
``--schedule`` then defaulted to "cosine", so this experiment's "constant" default never applied
(found from the run's saved config; fixed, tests/test_engine_clones.py). After the fix, at the
constant-rate defaults (same clones, seed 0, 734 s wall on one thread, probe evaluation 17%):
2-body stops improving at 5,312 (min 3.031 at 8,933, then 3.105 at 30,000), 3-body at 13,777
(2.740), 5-body still falling (2.565; candidate 16,384 not confirmed an octave later), real
still falling (2.400); drops 15,000 -> 30,000: 0.009 / 0.038 / 0.053 / 0.086. Seed 1 (666 s):
2-body 5,312 (then rises 2.993 -> 3.055), 3-body 12,634, 5-body and real still falling.
At 60,000 steps (the default since then; the same clones remade: test PLL 2.323 / 2.011 / 1.898; seeds
0 / 1, 1,253 user CPU-s each, one thread, at load 5-7 on 2 cores; probe evaluation 4.7 / 5.0% of
the wall with :func:`masked_probe_readout`) every clone's plateau is confirmed by the octave rule:
2-body 5,312 / 5,312 (min 3.031 / 2.993 at 8,933 / 8,192, then rises to 3.232 / 3.222, +11
noise s.d.), 3-body 13,777 / 12,634 (min 2.742 / 2.676; final 2.772 / 2.766), 5-body 17,867 /
16,384 (final 2.585 / 2.646; drop 30,000 -> 60,000 0.020 / -0.001), real still falling at
60,000 (candidate 42,495 unconfirmed; final 2.351 / 2.253, drop 30,000 -> 60,000 0.030 / 0.043).
So 2 < 3 < 5-body < real in both seeds; the 3- to 5-body gap is 0.37 octave (3 checkpoints).
Seed 2 (1,192 CPU-s): 2-body 4,467, 3-body 8,192, 5-body 21,247, real still falling at 60,000.
The cosine run: Clones: ``dsb clone
--corpus tinystories --layers 1 2 3 --no-control --threads 1`` (gpt2 top-1,000, T = 16; test PLL
2.323 / 2.011 / 1.898 for 2 / 3 / 5 bodies; 472 training + 63 MH CPU-s, the 5-body stage 328 +
38; MH 128 chains x 100 sweeps from test windows, NOT stationary: tau 29 / 32 / 42 sweeps, so the
adaptive window W = 20 tau never fits and R-hat is not computed; split-R-hat over the last 2 x 10
/ 2 x 50 sweeps 1.42 / 1.21, 1.46 / 1.23, 1.50 / 1.33). BERT 2 x 4 x 64, batch 64, AdamW lr 1e-3
(0.9, 0.95), wd 0.01 on >= 2-D weights, 64 warm-up steps then COSINE (see above), 30,000 steps, 8 checkpoints
per octave, 1,280 sequences per probe, pure [MASK] at 15%; 683 user + 56-60 sys CPU-s per seed
(one thread, probe evaluation 19% of the wall time). Loss (nats/token, seed 0 / seed 1) and
:func:`saturation_step` of each seed's curve:

======= ===== =========== =========== =========== =========== ====================================
probe   0     1024        4096        16384       30000       stops improving at (seed 0 / seed 1)
======= ===== =========== =========== =========== =========== ====================================
2-body  6.92  4.26 / 3.93 3.15 / 3.06 3.06 / 2.99 2.99 / 2.95 9,742 / still falling (t = 16,384)
3-body  6.92  4.31 / 4.07 3.06 / 3.00 2.74 / 2.64 2.64 / 2.59 still falling (t = 21,247) in both
5-body  6.92  4.24 / 4.06 2.94 / 3.01 2.55 / 2.60 2.46 / 2.52 still falling (t = 21,247) in both
real    6.91  3.69 / 3.41 2.78 / 2.67 2.41 / 2.30 2.30 / 2.20 still falling (t = 25,268) in both
======= ===== =========== =========== =========== =========== ====================================

Drop over the last octave (15,000 -> 30,000): 2-body 0.064 / 0.031, 3-body 0.103 / 0.046, 5-body
0.103 / 0.102, real 0.126 / 0.120 (curve noise 0.010-0.021). So the 2-body clone flattens first
(the only plateau that lasts an octave, seed 0; the smallest late drop in both seeds) and real
text falls most; the late drops order 2 < 3 < 5 < real in seed 1 and 2 < 3 = 5 < real in seed 0,
but :func:`saturation_step` does NOT tell 3- and 5-body apart at 3e4 steps (t = 21,247 for both,
in both seeds). An earlier run of the same recipe by scripts (``benchmarks/clone_saturation``,
clones of the same settings made by an older ``dsb clone``, 2 and 3 bodies) had the 2-body
clone stop at ~5.5k steps and then rise (3.04 -> 3.13) and the 3-body one at ~1e4; here the
2-body loss keeps a slow fall (3.06 -> 2.99 / 2.95 from 16,384 to 30,000). The same script on
THESE clones (seed 0, two probe mask sets) has the rise again (min 3.047 / 2.925, then 3.136 /
3.112) and separates the orders: 2-body stops at 5,312, 3-body at 12,634 / 10,624, 5-body at
13,777 / 15,024, real still falling. The script trains at a constant rate; the engine run's
cosine decay (above) is the one difference found, and the expected one: a rate near zero late in
the run stops the late learning that makes the 2-body loss rise. The clones are out of
distribution for the BERT (its loss on them stays above real text); at 16,384 and 30,000 its
loss on the 5-body clone is below the 3-body one in both seeds.
At the old default (2,048 steps, Tiny Shakespeare clones) no probe had saturated: 2/3/5-body
4.63/4.51/4.67, only the 3-body flat by 0.003 at the last checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from dsb_widgets.data.text import CORPORA
from dsb_widgets.engine.ensemble import ModelStack
from dsb_widgets.engine.task import (
    ConfigError,
    Experiment,
    Probe,
    RunConfig,
    Task,
    pick_device,
    probe_seed,
    register_experiment,
)
from dsb_widgets.options import options_dict, parse_options
from dsb_widgets.options_clones import CloneOptions
from dsb_widgets.saturation import (  # noqa: F401  (re-exported: dsb run clones' API)
    curve_noise,
    format_saturation,
    plateau_observed,
    saturation_step,
    saturation_steps,
    smoothing_window,
)

CLONE_LAYERS = tuple(range(1, 8))
CLONE_PROBES = ("real",) + tuple(f"{2 ** (L - 1) + 1}-body" for L in CLONE_LAYERS)
DEFAULT_OPTIONS: dict[str, Any] = options_dict(CloneOptions())  # the schema's defaults (read-only view)


def clone_options(cfg: RunConfig) -> CloneOptions:
    """The run's typed options (schema: :mod:`dsb_widgets.options_clones`)."""
    return parse_options(CloneOptions, cfg.options, experiment="clones")


def _clone_dir(cfg: RunConfig) -> Path:
    d = clone_options(cfg).clones
    if not d:
        raise ConfigError("the clones experiment needs --clones DIR; make one with "
                          "`dsb clone --corpus tinystories --layers 1 2 4 --out DIR`")
    path = Path(str(d)).expanduser()
    if not (path / "provenance.json").is_file():
        raise ConfigError(f"no clones in {path}; make them with `dsb clone --corpus NAME --layers 1 2 4 --out {path}`")
    return path


def _probe_mask(w: torch.Tensor, gen: torch.Generator, mask_id: int, p: float,
                style: str) -> tuple[torch.Tensor, torch.Tensor]:
    from dsb_widgets.models.bert import mask_tokens

    if style == "bert":
        return mask_tokens(w, gen, mask_id, p=p)
    return mask_tokens(w, gen, mask_id, p=p, random_frac=0.0, keep_frac=0.0)


def build_clones_task(cfg: RunConfig) -> Task:
    """Read the clones, tokenise the real corpus the same way, build the probes and the BERT."""
    from dsb_widgets.clones import load_clones, windows
    from dsb_widgets.data.text import tokenize_corpus
    from dsb_widgets.models.bert import Bert, BertConfig

    o = clone_options(cfg)
    clones = load_clones(_clone_dir(cfg))
    prov = clones.provenance
    ccfg = prov["config"]
    corpus = str(cfg.dataset) if cfg.dataset is not None else str(prov["corpus"])
    context = int(prov["context"])
    if o.context is not None and o.context != context:
        raise ConfigError(f"--context {o.context} differs from the clones' context {context}; drop --context")
    tc = tokenize_corpus(corpus, tokenizer=str(ccfg["tokenizer"]), vocab_size=int(ccfg["vocab_size"]),
                         data_dir=cfg.data_dir if cfg.data_dir is not None else ccfg.get("data_dir"),
                         max_train_chars=ccfg.get("max_train_chars"))
    if tc.token_strings != clones.token_strings:
        raise ConfigError(f"corpus {corpus!r} tokenises to another vocabulary than the clones in {clones.path} "
                          f"(made from {prov['corpus']!r}); pass --corpus {prov['corpus']}")
    V, p = tc.vocab_size, o.mask_prob
    wanted = tuple(cfg.probes) if cfg.probes is not None else CLONE_PROBES
    explicit = set(wanted) != set(CLONE_PROBES)
    by_name = {f"{clones.bodies[L]}-body": L for L in clones.tokens}
    probes: list[Probe] = []
    assert cfg.probe_size is not None, "resolve_config fills probe_size"
    n = int(cfg.probe_size)
    for name in CLONE_PROBES:
        if name not in wanted:
            continue
        gen = torch.Generator().manual_seed(probe_seed(cfg.seed, name))
        if name == "real":
            w, order, desc = windows(tc.test, context, n, gen), math.inf, "held-out test windows"
        elif name in by_name:
            L = by_name[name]
            tok = clones.tokens[L]
            w = tok[torch.randperm(tok.shape[0], generator=gen)[:n]]
            acc = prov["orders"][str(L)]["acceptance_rate"]
            order, desc = float(clones.bodies[L]), f"MH samples of a {L}-layer factored MLM (acceptance {acc:.2f})"
        elif explicit:
            raise ConfigError(f"probe {name!r} is not in {clones.path} (it has {', '.join(sorted(by_name))}); "
                              f"make it with `dsb clone --layers ...` or drop it from --probes")
        else:
            continue
        x, y = _probe_mask(w, gen, V, p, o.probe_mask)
        probes.append(Probe(name, order, x, y, description=desc))
    if not any(pr.name != "real" for pr in probes):
        raise ConfigError(f"no clone probes selected from {clones.path}; pass --probes with some of {sorted(by_name)}")
    bcfg = BertConfig(V, context, n_layer=o.n_layer, n_head=o.n_head, d_model=o.d_model)
    sample_batch = train_sampler(tc.train, context, V, p, cfg.device)
    info = {"units": "nats/token", "bytes_per_token": tc.bytes_per_token, "corpus": tc.name, "source": tc.source,
            "tokenizer": str(ccfg["tokenizer"]), "vocab_size": V, "context": context, "clones": str(clones.path),
            "train_tokens": int(tc.train.size), "objective": "masked LM",
            "clone_acceptance": ",".join(f"{clones.bodies[L]}-body:{prov['orders'][str(L)]['acceptance_rate']:.3f}"
                                         for L in sorted(clones.tokens))}
    # CPU: only the masked positions go through the read-out (masked_readout_loss); a GPU keeps the
    # full read-out, whose cost is small there, rather than wait for the count of masked rows per step
    sparse = pick_device(cfg.device).type == "cpu" and not cfg.compile
    return Task(make_model=lambda seed: Bert(bcfg), sample_batch=sample_batch, probes=probes, info=info,
                device_sampling=True, step_loss=masked_readout_loss if sparse else None,
                probe_readout=masked_probe_readout)


def train_sampler(train: np.ndarray, context: int, mask_id: int, p: float,
                  device: str = "cpu") -> Callable[[torch.Generator, int], tuple[torch.Tensor, torch.Tensor]]:
    """``sample_batch(gen, B)``: B uniformly placed train windows of ``context`` tokens, BERT-masked
    (:func:`~dsb_widgets.models.bert.mask_tokens`, 80/10/10 at rate ``p``): (x, y) (B, T) int64.

    The train tokens stay on the run's device as one int32 tensor; window starts are drawn from
    ``gen`` on its own device (``torch.randint(n - T + 1, (B,))``) and the masks too, so on a GPU
    with an on-device generator nothing is copied or read back per step (as the text experiment's
    sampler). On a CPU generator the draws, the batches and the generator's state afterwards are
    those of the former ``mask_tokens(clones.windows(train, T, B, gen), gen, V, p)``.
    """
    from dsb_widgets.models.bert import mask_tokens

    if train.size < context + 1:
        raise ConfigError(f"the train split has {train.size} tokens, fewer than --context {context} + 1; "
                          "give more text or make clones with a smaller --context")
    resident = pick_device(device)
    arr = np.ascontiguousarray(train, dtype=np.int32)
    tokens = torch.from_numpy(arr if arr.flags.writeable else arr.copy()).to(resident)  # (n,) int32
    hi = int(tokens.numel()) - context + 1
    offsets = torch.arange(context, device=resident)  # (T,)

    def sample_batch(gen: torch.Generator, bs: int) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(hi, (bs,), generator=gen, device=gen.device).to(resident, non_blocking=True)
        return mask_tokens(tokens[starts[:, None] + offsets].long(), gen, mask_id, p=p)  # (B, T), (B, T)

    return sample_batch


def masked_readout_loss(stack: ModelStack, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-seed masked-LM loss (S,), the mean cross-entropy over the scored positions (y != -100),
    with only those positions sent through the read-out: ``head(features(x)[y != -100])``
    (:meth:`~dsb_widgets.models.bert.Bert.features`). The same loss and gradients as
    cross-entropy on the full logits ``stack(x)`` (S, B, T, V), without the (B, T, V) logits of the
    ~85% unscored positions (1.6x the steps per CPU-second at V = 1,000, 2 x 64, batch 64).

    x, y: (S, B, T). Each seed's scored rows are padded to the longest seed's count with ignored
    labels (no gradient), so the read-out runs as one stacked call. The row selection is a boolean
    index: free on a CPU, a device sync on a GPU (where the engine keeps the full read-out).
    """
    from torch.nn.utils.rnn import pad_sequence

    from dsb_widgets.engine.evaluate import train_loss
    from dsb_widgets.models.bert import IGNORE

    h = stack.call("features", x)  # (S, B, T, d)
    sel = y != IGNORE  # (S, B, T)
    if h.shape[0] == 1:
        rows, labels = h[0][sel[0]][None], y[0][sel[0]][None]  # (1, N, d), (1, N)
    else:
        rows = pad_sequence([h[s][sel[s]] for s in range(h.shape[0])], batch_first=True)  # (S, N, d)
        labels = pad_sequence([y[s][sel[s]] for s in range(h.shape[0])], batch_first=True, padding_value=IGNORE)
    return train_loss(stack.call("head", rows), labels)  # logits (S, N, V)


def masked_probe_readout(stack: ModelStack, x: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Logits (S, N, V) of a probe batch's N scored positions only, for every seed:
    ``head(features(x)[scored])``, row-major over (B, T) as ``out[:, scored]`` of the full read-out
    ``stack(x, shared=True)`` (S, B, T, V), which :func:`~dsb_widgets.engine.evaluate.evaluate_probe`
    then scores against ``y[scored]``: the same loss and accuracy sums.

    x: (B, T) on the run's device, shared by every seed; scored: (B, T) bool on the CPU (the probe's
    labels != -100, fixed when the probe is built). Its flat indices are found on the CPU and
    gathered with ``index_select``, so a GPU is never asked for a count (no host sync).
    """
    h = stack.call("features", x, shared=True)  # (S, B, T, d)
    S, d = h.shape[0], h.shape[-1]
    idx = scored.reshape(-1).nonzero().squeeze(1).to(h.device, non_blocking=True)  # (N,)
    return stack.call("head", h.reshape(S, -1, d).index_select(1, idx))  # (S, N, d) -> (S, N, V)


def _validate(cfg: RunConfig) -> None:
    _clone_dir(cfg)  # d_model % n_head, mask_prob, probe_mask: checked by CloneOptions


register_experiment(Experiment(
    name="clones",
    build=build_clones_task,
    # warm-up then CONSTANT lr (warmup-stable): a cosine decay to zero flattens every curve at the
    # end and fakes saturation (issue 12); saturation_steps() reads the plateau off the results.
    # 6e4 steps (at 3e4 the 5-body plateau could not be confirmed an octave later), 8 checkpoints
    # per octave, 1,280 probe sequences: the measured runs in the docstring (~1,250 CPU-s per seed)
    defaults={"model": "bert", "steps": 60_000, "batch_size": 64, "optimizer": "adamw", "lr": 1e-3,
              "weight_decay": 0.01, "warmup": 64, "schedule": "constant", "per_octave": 8, "probe_size": 1280},
    models=("bert",),
    probes=CLONE_PROBES,
    datasets=CORPORA,  # one list: the text data layer's
    description="a BERT trained on real text, probed with its (2^(L-1)+1)-body factored-attention clones",
    validate=_validate,
    options=CloneOptions,
))
