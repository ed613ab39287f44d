"""The text experiment: language models probed with n-gram sequences (Belrose et al., ICML 2024, Sec. 5).

A language model trained on real text is evaluated at log-spaced checkpoints on fixed probe
sets, all built once from the TRAIN split's statistics and ``cfg.seed``:

========= ===== ===================================================================================
probe     order what it keeps
========= ===== ===================================================================================
real      inf   held-out test windows (everything)
unigram   1     i.i.d. tokens from the train unigram frequencies (the max-ent chain of 1st moments)
bigram    2     Markov chain p(b | a) of train bigram counts (max-ent given the 2nd moments)
trigram   3     second-order chain p(c | a, b), back-off to bigram/unigram for unseen contexts
shuffled  1     real test windows with their tokens permuted within each window: a bag of tokens
========= ===== ===================================================================================

``shuffled`` keeps each window's token multiset (topic, per-document word frequencies) but no
positional interaction at all: every position's marginal given the bag is the bag's empirical
unigram, so it is order 1 in the positional sense (like ``unigram``, whose bag is the corpus).
It is off unless asked for (``--probes real unigram bigram trigram shuffled``).

Divergence probes (opt-in, ``--probes real unigram bigram kl_unigram kl_bigram js_unigram ...``):
``kl_<n>`` = KL(n-gram predictor || model) and ``js_<n>`` = Jensen-Shannon divergence between the
model's next-token distribution and the train unigram / bigram / trigram predictor (back-off for
unseen contexts), nats per token averaged over the ``real`` windows; measured per checkpoint by
:mod:`dsb_widgets.divergence` (the same code as ``dsb run checkpoints``), causal LM only.

The dotted floors are exact: for a causal LM scoring positions 1..T of a length-(T+1) sample,
floor = mean_t H(x_t | x_<t) from :func:`dsb_widgets.ngrams.loss_floor` (nats/token). For the
masked LM (``--model bert``: 15% of positions selected, BERT's 80/10/10 replacement, labels
-100 elsewhere) the optimum depends on the corruption pattern and is left NaN.

Sizes (options: ``tokenizer``, ``vocab_size``, ``context``, ``n_layer``, ``n_head``,
``d_model``, ``max_train_chars``, ``mask_prob``): the defaults run on 2 CPU cores in minutes.
Without a local copy (``--data-dir`` / ``$DSB_DATA_DIR``) a named corpus is downloaded from the
hub; offline that fails with one line naming both fixes (there is no text that is always
available, unlike sklearn's digits for the image experiment, and a silent stand-in corpus
would make results that look like TinyStories but are not).

Measured, default run (``dsb run text``: offline TinyStories head, lowercased, GPT-2 BPE top-1000,
context 64, GPT 2 x 128 (0.53M parameters), AdamW lr 1e-3, batch 32, 512 steps, probe_size 128;
one seed; small-data reproduction, not Belrose's Pythia scale):

- unigram probe: minimum 5.321 nats/token at step 32 (floor 5.152), then rises to 6.897 at 512;
- bigram probe: minimum 3.668 at step 256 (floor 3.182), 3.708 at 512;
- trigram probe: still falling at 512 (3.530; floor 2.304); real text falls throughout (3.230);
- shuffled windows track the unigram probe (minimum 5.312 at step 45, 6.675 at 512).

WikiText-2 (offline: the 259k-token VALIDATION split is the train split, v1 text with its own
``<unk>``), same settings (``dsb run text --corpus wikitext2``, 240 s user CPU, 6.3 min wall on
the loaded machine): unigram minimum 4.631 at step 45 (floor 4.402), 6.377 at 512; bigram
(3.201, floor 2.803) and trigram (3.176, floor 2.054) still falling at 512, like real (2.965);
shuffled minimum 4.456 at step 45. The small train split is seen ~4 times in 512 steps.

Tiny Shakespeare, characters (V = 65), context 32, GPT 2 x 64, lr 3e-3, batch 16, 160 steps
(the CI test): unigram minimum 3.325 at step 16 (floor 3.309), bigram 2.611 at 160 (floor 2.452).
Speed: the default model trains at ~10.7k tokens per CPU-second (one thread, forward + backward
+ AdamW, batch 32 x 64); with 2 threads on an idle 2-core machine ~13 steps/s (~27k tokens/s),
so the default run takes 1-2 minutes there. On the shared development machine (load average
3-20 on 2 cores) ``dsb run text`` took 11 min wall, 432 s user CPU, probe evaluation 13%.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from dsb_widgets.data.text import CORPORA, TokenizedCorpus, tokenize_corpus
from dsb_widgets.divergence import DIVERGENCE_ORDER, DIVERGENCE_PROBES, DivergenceMeter
from dsb_widgets.engine.task import (
    ConfigError,
    Experiment,
    Probe,
    RunConfig,
    Task,
    probe_seed,
    register_experiment,
    required,
)
from dsb_widgets.ngrams import NGramStats, count_ngrams, entropy_rate, loss_floor, sample_sequences
from dsb_widgets.options import options_dict, parse_options
from dsb_widgets.options_text import TextOptions

TEXT_PROBES = ("real", "unigram", "bigram", "trigram", "shuffled") + DIVERGENCE_PROBES  # kl_/js_*: opt-in
DEFAULT_PROBES = ("real", "unigram", "bigram", "trigram")
TEXT_MODELS = ("gpt", "bert")
PROBE_ORDER = {"real": math.inf, "unigram": 1.0, "bigram": 2.0, "trigram": 3.0, "shuffled": 1.0, **DIVERGENCE_ORDER}
NGRAM_ORDER = {"unigram": 1, "bigram": 2, "trigram": 3}
DEFAULT_OPTIONS: dict[str, Any] = options_dict(TextOptions())  # the schema's defaults (read-only view)


def text_options(cfg: RunConfig) -> TextOptions:
    """The run's typed options (validated by the schema in :mod:`dsb_widgets.options_text`)."""
    return parse_options(TextOptions, cfg.options, experiment="text")


@dataclass(frozen=True)
class TextSetup:
    """Tokenised corpus and its train n-gram statistics; ``window`` = tokens drawn per example."""

    corpus: TokenizedCorpus
    stats: dict[int, NGramStats]  # order k -> counts of orders 1..k on the train tokens
    context: int  # T: model input length
    mlm: bool

    @property
    def window(self) -> int:
        """Causal LM: T + 1 tokens (inputs 0..T-1, targets 1..T); masked LM: T tokens."""
        return self.context if self.mlm else self.context + 1

    @property
    def vocab_size(self) -> int:
        return self.corpus.vocab_size


def load_text(cfg: RunConfig) -> TokenizedCorpus:
    """The run's tokenised corpus (cached on disk by :func:`tokenize_corpus`)."""
    o = text_options(cfg)
    return tokenize_corpus(str(cfg.dataset), tokenizer=o.tokenizer, vocab_size=o.vocab,
                           data_dir=cfg.data_dir, max_train_chars=o.max_chars)


def setup_text(cfg: RunConfig, corpus: TokenizedCorpus | None = None) -> TextSetup:
    corpus = corpus if corpus is not None else load_text(cfg)
    context = text_options(cfg).context
    mlm = cfg.model == "bert"
    window = context if mlm else context + 1
    for split in ("train", "test"):
        n = getattr(corpus, split).size
        if n < window:
            raise ConfigError(f"the {split} split of {corpus.name!r} has {n} tokens, fewer than a window of "
                              f"{window}; pass a smaller --context or a larger corpus")
    stats = {k: count_ngrams(corpus.train, corpus.vocab_size, order=k) for k in (1, 2, 3)}
    return TextSetup(corpus, stats, context, mlm)


def windows(tokens: np.ndarray, starts: np.ndarray, length: int) -> torch.Tensor:
    """(N, length) int64 windows tokens[s : s + length] for each start s."""
    idx = starts[:, None] + np.arange(length)[None, :]  # (N, length)
    return torch.from_numpy(tokens[idx].astype(np.int64))


def _split_xy(w: torch.Tensor, setup: TextSetup, gen: torch.Generator,
              mask_prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows (N, L) -> model input x (N, T) and labels y (N, T), -100 where not scored."""
    if not setup.mlm:
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()  # predict token t+1 from tokens <= t
    from dsb_widgets.models.bert import mask_tokens

    return mask_tokens(w, gen, mask_id=setup.vocab_size, p=mask_prob)


def build_text_probes(setup: TextSetup, names: tuple[str, ...], n: int, seed: int,
                      mask_prob: float = 0.15) -> list[Probe]:
    """The probe sets ``names`` with ``n`` windows each, a deterministic function of ``seed``."""
    L, c = setup.window, setup.corpus
    probes: list[Probe] = []
    for name in names:
        rng = np.random.default_rng(probe_seed(seed, name))  # by name: independent of the other probes
        gen = torch.Generator().manual_seed(probe_seed(seed, name))
        floor = math.nan
        if name in ("real", "shuffled"):  # the same test windows for both: a paired comparison
            starts = np.random.default_rng(probe_seed(seed, "real")).integers(0, c.test.size - L + 1, size=n)
            w = windows(c.test, starts, L)  # (n, L)
            if name == "shuffled":
                perm = rng.permuted(np.tile(np.arange(L), (n, 1)), axis=1)  # (n, L) one permutation per row
                w = torch.gather(w, 1, torch.from_numpy(perm))
            desc = "held-out test windows" + (", tokens permuted within each window" if name == "shuffled" else "")
        else:
            stats = setup.stats[NGRAM_ORDER[name]]
            w = torch.from_numpy(sample_sequences(stats, n, L, seed=rng))  # (n, L) int64
            if not setup.mlm:
                floor = float(loss_floor(stats, L)[1:].mean())  # positions 1..T are scored
            desc = f"sequences from the train {name} max-ent chain (entropy rate {entropy_rate(stats):.3f} nats/token)"
        x, y = _split_xy(w, setup, gen, mask_prob)
        probes.append(Probe(name, PROBE_ORDER[name], x, y, floor=floor, description=desc))
    return probes


def make_text_model(cfg: RunConfig, vocab_size: int) -> Callable[[int], nn.Module]:
    """Factory seed -> fresh model of the run's architecture (``cfg.model``: gpt or bert)."""
    o = text_options(cfg)
    dims = {"n_layer": o.n_layer, "n_head": o.n_head, "d_model": o.d_model}
    if cfg.model == "bert":
        from dsb_widgets.models.bert import Bert, BertConfig

        bcfg = BertConfig(vocab_size, o.context, **dims)
        return lambda seed: Bert(bcfg)
    from dsb_widgets.models.gpt import GPT, GPTConfig

    gcfg = GPTConfig(vocab_size, o.context, n_layer=o.n_layer, n_head=o.n_head, d_model=o.d_model)
    return lambda seed: GPT(gcfg)


def build_text_task(cfg: RunConfig, corpus: TokenizedCorpus | None = None) -> Task:
    """Tokenise the corpus, count n-grams, build the probes; return the task for the engine."""
    setup = setup_text(cfg, corpus)
    mask_prob = text_options(cfg).mask_prob
    names = tuple(cfg.probes or DEFAULT_PROBES)
    divs = tuple(n for n in names if n in DIVERGENCE_ORDER)  # measured on the real windows, not data sets
    probe_size = required(cfg.probe_size, "probe_size")
    probes = build_text_probes(setup, tuple(n for n in names if n not in DIVERGENCE_ORDER), probe_size,
                               cfg.seed, mask_prob)
    sample_batch = train_sampler(setup, mask_prob, cfg.device)

    c = setup.corpus
    info = {"units": "nats/token", "bytes_per_token": c.bytes_per_token, "corpus": c.name, "source": c.source,
            "tokenizer": c.tokenizer, "vocab_size": c.vocab_size, "context": setup.context,
            "train_tokens": int(c.train.size), "test_tokens": int(c.test.size),
            "objective": "masked LM" if setup.mlm else "causal LM"}
    measure = divergence_measure(setup, divs, probe_size, cfg.seed, cfg.eval_batch) if divs else None
    return Task(make_model=make_text_model(cfg, c.vocab_size), sample_batch=sample_batch, probes=probes, info=info,
                extra_probes={n: DIVERGENCE_ORDER[n] for n in divs}, measure=measure,
                device_sampling=True)  # windows and BERT's masks are drawn on the generator's device


def train_sampler(setup: TextSetup, mask_prob: float,
                  device: str = "cpu") -> Callable[[torch.Generator, int], tuple[torch.Tensor, torch.Tensor]]:
    """``sample_batch(gen, B)``: B uniformly placed training windows, split into (x, y) (B, T) int64.

    The train tokens are kept as one int32 tensor on the run's device (a masked LM's masks are
    drawn there too, by :func:`~dsb_widgets.models.bert.mask_tokens`). Window starts are
    drawn from ``gen`` on its own device, ``torch.randint(n - L + 1, (B,))``, and the windows
    gathered there (``tokens[start + arange(L)]``): on a GPU with an on-device generator nothing is
    copied or read back per step. The draws (and the batches) are those of the former NumPy
    gather on a CPU generator, so CPU runs are unchanged.
    """
    from dsb_widgets.engine.task import pick_device

    resident = pick_device(device)
    train = np.ascontiguousarray(setup.corpus.train, dtype=np.int32)
    tokens = torch.from_numpy(train if train.flags.writeable else train.copy()).to(resident)  # (n,) int32
    L = setup.window
    hi = int(tokens.numel()) - L + 1
    offsets = torch.arange(L, device=resident)  # (L,)

    def sample_batch(gen: torch.Generator, bs: int) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(hi, (bs,), generator=gen, device=gen.device).to(resident, non_blocking=True)
        w = tokens[starts[:, None] + offsets].long()  # (B, L)
        return _split_xy(w, setup, gen, mask_prob)  # (B, T), (B, T)

    return sample_batch


def divergence_measure(setup: TextSetup, names: tuple[str, ...], n: int, seed: int,
                       batch: int) -> Callable[[nn.Module], dict[str, torch.Tensor]]:
    """Per-checkpoint KL / JS between each seed's model and the train n-gram predictors
    (:mod:`dsb_widgets.divergence`) on the ``real`` probe's test windows; name -> (S,) nats."""
    real = build_text_probes(setup, ("real",), n, seed)[0]
    w = torch.cat([real.x[:, :1], real.y], 1)  # (n, T + 1) windows

    @torch.no_grad()
    def measure(stack: nn.Module) -> dict[str, torch.Tensor]:
        meter = DivergenceMeter(setup.stats, names=names)
        device = next(stack.parameters()).device
        for i in range(0, n, max(1, batch // setup.context)):
            chunk = w[i:i + max(1, batch // setup.context)]
            meter.update(chunk, stack(chunk[:, :-1].to(device), shared=True))  # logits (S, B, T, V)
        return {k: torch.from_numpy(v) for k, v in meter.means().items()}

    return measure


def _validate(cfg: RunConfig) -> None:
    name = str(cfg.dataset)
    key = name.lower().replace("-", "").replace("_", "")
    if key not in CORPORA and not Path(name).expanduser().exists():
        raise ConfigError(f"unknown corpus {name!r}; pass --corpus one of {', '.join(CORPORA)} or a path to a "
                          "UTF-8 text file or folder")
    # tokenizer, vocab_size, context, d_model % n_head, mask_prob: checked by TextOptions
    divs = [p for p in (cfg.probes or ()) if p in DIVERGENCE_ORDER]
    if divs and cfg.model == "bert":
        raise ConfigError(f"probes {', '.join(divs)} compare next-token distributions; they need --model gpt")


register_experiment(Experiment(
    name="text",
    build=build_text_task,
    defaults={"dataset": "tinystories", "model": "gpt", "steps": 512, "batch_size": 32, "optimizer": "adamw",
              "lr": 1e-3, "weight_decay": 0.05, "warmup": 32, "per_octave": 2, "probe_size": 128,
              "probes": DEFAULT_PROBES},
    models=TEXT_MODELS,
    probes=TEXT_PROBES,
    datasets=CORPORA,
    description="language models probed with unigram / bigram / trigram sequences from train statistics",
    validate=_validate,
    options=TextOptions,
))
