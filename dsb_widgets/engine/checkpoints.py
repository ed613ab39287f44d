"""The checkpoints experiment: pretrained checkpoint suites probed with n-gram data (Belrose et al., ICML 2024).

Belrose et al.'s language-model headline is measured on Pythia's public checkpoints: loss on
unigram-sampled sequences reaches its minimum (step 128 for Pythia-70m, 8.48 nats) before the
loss on bigram sequences (step 256, 6.69), and on real text the model's next-token distribution
first approaches the unigram predictor, then moves on to the bigram one.
``dsb run checkpoints --model ID_OR_DIR --corpus C`` evaluates such a suite with NO training:

- checkpoints: a local folder of ``step<N>/`` subfolders (``save_pretrained``: model + tokenizer)
  or a hub id with ``step<N>`` revisions (``--revisions step0 step1 ...``; default Belrose's
  log-spaced subset: 0, powers of two, 1000 x powers of two, the last). One at a time, in step
  order: memory holds one model; the result's ``step`` is each checkpoint's training step.
- probes, built ONCE from the corpus with the suite's OWN tokenizer (AutoTokenizer from the
  checkpoint, full vocabulary, no top-V cut): ``real`` (held-out test windows), ``unigram``,
  ``bigram``, ``trigram`` (max-ent chains of the train counts, exact floors), exactly those of
  ``dsb run text`` (:func:`dsb_widgets.engine.text.build_text_probes`); every checkpoint must
  share that tokenizer.
- divergences on the ``real`` windows, :mod:`dsb_widgets.divergence`: ``kl_unigram``,
  ``kl_bigram``, ``kl_trigram`` = KL(n-gram || model), ``js_*`` = Jensen-Shannon, nats per token,
  stored as the probe's ``loss`` (accuracy NaN), ``probe_order`` = n-gram order.

The driver writes the same Dataset as the training loop (dims step, probe, seed; one seed =
``cfg.seed``, the probe seed; ``train_loss`` NaN) after every checkpoint, publishes the same
events, and resumes per checkpoint (``--resume``: finished steps are kept, the next one loads).
The saved ``attrs["config"]`` is the config as asked (``--steps`` is not used: the suite decides);
the last checkpoint's step, where the run ends, is ``attrs["final_step"]`` (the sweep's
``is_finished`` reads it). Files written before (config ``steps`` = last step, no ``final_step``)
still load and resume, and are rewritten in the current form on ``--resume``.
``--batch-size`` = windows per forward pass.

Losses and divergences use the model's logits over the tokenizer's V ids (rows beyond V, e.g.
Pythia's padding 50,277 -> 50,304, are dropped and the softmax renormalised over V).

Measured (toy GPT-NeoX suites from :func:`dsb_widgets.checkpoint_suite.train_toy_suite`: 2 x 64,
BPE 1024, 512 steps; context 128, 128 windows per probe; offline data; nats/token):

- TinyStories head: unigram minimum 5.961 at step 64 (floor 5.697) -> 7.278 at 512; bigram still
  falling at 512 (3.982, floor 3.399); KL(unigram || model) 0.260 at 64 -> 1.597, KL(bigram ||
  model) 3.533 -> 0.556. WikiText-2: unigram 6.087 at 64 -> 7.469, bigram 4.146 at 512.
  Tiny Shakespeare: unigram 6.018 at 64 -> 7.226, bigram 4.327 at 512.
- the same TinyStories suite trained to 2048 steps: unigram minimum at 64 (5.961 -> 8.586),
  bigram minimum at 512 (3.961 -> 4.156), trigram still falling (3.583); KL to the unigram /
  bigram predictor bottoms out at 64 / 512, KL to the trigram one falls throughout.
- cost: ~3-4 s CPU per checkpoint (0.5 s loading; the divergences are O(positions x V) and
  dominate at this model size), peak RSS 1.0 GB (2 shared cores, loaded).
"""

from __future__ import annotations

import gc
import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from dsb_widgets.checkpoint_suite import Checkpoint, encode, find_suite, is_hub_id, load_model, load_tokenizer
from dsb_widgets.data.common import cache_dir
from dsb_widgets.data.text import CORPORA, Corpus, TokenizedCorpus, load_corpus
from dsb_widgets.divergence import DIVERGENCE_ORDER, DIVERGENCE_PROBES, DivergenceMeter
from dsb_widgets.engine.loop import TrainResult, _publish, checkpoint_rows
from dsb_widgets.engine.results import METRICS, ResultsTable, ResultsWriter, load_results
from dsb_widgets.engine.task import (
    PROBE_SEEDING,
    ConfigError,
    Experiment,
    Probe,
    RunConfig,
    pick_device,
    register_experiment,
    required,
)
from dsb_widgets.engine.text import PROBE_ORDER, TextSetup, build_text_probes
from dsb_widgets.ngrams import count_ngrams
from dsb_widgets.options_checkpoints import CheckpointOptions

SAMPLE_PROBES = ("real", "unigram", "bigram", "trigram")
CHECKPOINT_PROBES = SAMPLE_PROBES + DIVERGENCE_PROBES
SUGGESTED_MODELS = ("EleutherAI/pythia-70m", "EleutherAI/pythia-160m", "EleutherAI/pythia-410m")


@dataclass(frozen=True, eq=False)
class SuiteData:
    """The corpus in the suite's tokens, its train n-gram counts and the probe sets."""

    setup: TextSetup
    probes: list[Probe]  # requested sample probes (real / unigram / bigram / trigram)
    real: Probe  # test windows for the divergences (the ``real`` probe, also when not requested)
    fingerprint: str


def fingerprint(tokenizer: Any) -> str:
    """SHA-256 of the tokenizer's full serialisation (vocabulary, merges, normalisers)."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:24]


def tokenize_with(tokenizer: Any, corpus: Corpus) -> TokenizedCorpus:
    """``corpus`` in the checkpoint tokenizer's ids (cached on disk by text + tokenizer hash)."""
    key = hashlib.sha256("\x00".join([fingerprint(tokenizer), corpus.train_text, corpus.test_text]).encode(
        "utf-8", "surrogatepass")).hexdigest()[:24]
    path = cache_dir() / "text" / f"hf-{corpus.name}-{key}.npz"
    if path.is_file():
        with np.load(path) as f:
            train, test = f["train"], f["test"]
    else:
        train, test = encode(tokenizer, corpus.train_text), encode(tokenizer, corpus.test_text)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"tmp-{key}.npz")
        np.savez(tmp, train=train, test=test)
        tmp.replace(path)
    vocab = len(tokenizer)
    return TokenizedCorpus(corpus.name, train, test, vocab, [], len(corpus.train_text.encode()) / max(train.size, 1),
                           type(tokenizer).__name__, corpus.source)


def prepare(corpus: Corpus, tokenizer: Any, names: tuple[str, ...], cfg: RunConfig, context: int) -> SuiteData:
    toks = tokenize_with(tokenizer, corpus)
    for split in ("train", "test"):
        if getattr(toks, split).size < context + 1:
            raise ConfigError(f"the {split} split of {corpus.name!r} has {getattr(toks, split).size} tokens with this "
                              f"tokenizer, fewer than a window of {context + 1}; pass -o context=... smaller")
    stats = {k: count_ngrams(toks.train, toks.vocab_size, order=k) for k in (1, 2, 3)}
    setup = TextSetup(toks, stats, context, mlm=False)
    wanted = tuple(n for n in SAMPLE_PROBES if n in names or n == "real")
    built = {p.name: p for p in build_text_probes(setup, wanted, required(cfg.probe_size, "probe_size"), cfg.seed)}
    return SuiteData(setup, [built[n] for n in SAMPLE_PROBES if n in names], built["real"], fingerprint(tokenizer))


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, data: SuiteData, names: tuple[str, ...], batch: int,
                   device: torch.device, amp: bool) -> dict[str, np.ndarray]:
    """metric -> (n_probe, 1) for ``names`` (sample probes: cross-entropy / accuracy; divergences: loss)."""
    V = data.setup.vocab_size
    divs = tuple(n for n in names if n in DIVERGENCE_ORDER)
    meter = DivergenceMeter(data.setup.stats, names=divs) if divs else None
    res: dict[str, dict[str, float]] = {}
    probes = list(data.probes) + ([data.real] if meter is not None and "real" not in names else [])
    for probe in probes:
        ce = correct = 0.0
        count = 0
        for i in range(0, len(probe), batch):
            x, y = probe.x[i:i + batch].to(device), probe.y[i:i + batch].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(input_ids=x).logits
            if logits.shape[-1] < V:
                raise ConfigError(f"the model has {logits.shape[-1]} output logits, its tokenizer {V} tokens")
            logits = logits[..., :V].float()  # (B, T, V): padded vocabulary rows dropped (Pythia: 50304 -> 50277)
            ce += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
            correct += float((logits.argmax(-1) == y).sum())
            count += y.numel()
            if meter is not None and probe is data.real:
                meter.update(torch.cat([x[:, :1], y], 1), logits)  # windows (B, T + 1)
        res[probe.name] = {"loss": ce / count, "accuracy": correct / count}
    if meter is not None:
        res.update({n: {"loss": float(v[0])} for n, v in meter.means().items()})
    return {m: np.array([[res[n].get(m, math.nan)] for n in names]) for m in METRICS}


def _suite(cfg: RunConfig) -> list[Checkpoint]:
    opts = EXPERIMENT.parse(cfg)
    suite = find_suite(str(cfg.model), tuple(opts.revisions))
    if not suite:
        raise ConfigError(f"no checkpoints selected from {cfg.model}; check --revisions")
    return suite


def evaluate_checkpoints(cfg: RunConfig, out: str | Path | None = None, resume: bool = False,
                         subscribers: Iterable[Any] = (), stop_event: Any = None,
                         progress: bool = False) -> TrainResult:
    """Evaluate every checkpoint of ``cfg.model`` in step order; the training loop's files and events."""
    t0 = time.perf_counter()
    opts = EXPERIMENT.parse(cfg)
    suite = _suite(cfg)
    final = max(1, suite[-1].step)  # where the run ends; the saved config stays the one asked for
    names = tuple(cfg.probes or CHECKPOINT_PROBES)
    device = pick_device(cfg.device)
    amp = bool(cfg.amp and device.type == "cuda")
    corpus = load_corpus(str(cfg.dataset), cfg.data_dir, max_train_chars=opts.max_train_chars or None)
    tok = load_tokenizer(suite[0])
    data = prepare(corpus, tok, names, cfg, opts.context)
    orders = [PROBE_ORDER.get(n, DIVERGENCE_ORDER.get(n, math.nan)) for n in names]
    floors = {p.name: p.floor for p in data.probes}
    setup = data.setup
    attrs = {"config": cfg.to_json(), "final_step": final, "experiment": cfg.experiment, "units": "nats",
             "probe_seeding": PROBE_SEEDING, "model": str(cfg.model),  # probes: build_text_probes, by name
             "checkpoints": ",".join(str(c.step) for c in suite), "corpus": corpus.name, "source": corpus.source,
             "tokenizer": setup.corpus.tokenizer, "vocab_size": setup.vocab_size, "context": setup.context,
             "bytes_per_token": setup.corpus.bytes_per_token, "train_tokens": int(setup.corpus.train.size),
             "test_tokens": int(setup.corpus.test.size), "objective": "causal LM (pretrained checkpoints)"}
    table = ResultsTable(list(names), orders, [cfg.seed], attrs=attrs, floors=[floors.get(n, math.nan) for n in names])
    out = Path(out) if out is not None else None
    elapsed = 0.0
    writer = ResultsWriter(out) if out is not None else None  # one appended row per checkpoint
    if out is not None and writer is not None:
        table, elapsed, legacy = _prepare_files(out, cfg, table, data, resume, final)
        if legacy:  # an older file: rewrite it now in the current form (also when nothing is left to do)
            writer.write(table)
    done = set(table.steps)
    subscribers = list(subscribers)
    # the live view's config carries the suite's last step as ``steps`` (its x range, progress total)
    _publish(subscribers, {"type": "start", "config": cfg.replace(steps=final), "probes": table.probes,
                           "orders": table.orders,
                           "floors": table.floors, "seeds": table.seeds, "checkpoints": [c.step for c in suite],
                           "step": table.steps[-1] if table.steps else 0,
                           "rows": [r for i in range(len(table.steps)) for r in checkpoint_rows(table, i)]})
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(suite), initial=len(done), desc=f"checkpoints/{Path(str(cfg.model)).name}",
                   unit="ckpt", dynamic_ncols=True)
    status, t_eval, t_load = "finished", 0.0, 0.0
    start = time.perf_counter() - elapsed
    for ckpt in suite:
        if ckpt.step in done:
            continue
        if stop_event is not None and stop_event.is_set():
            status = "stopped"
            break
        tl = time.perf_counter()
        if fingerprint(load_tokenizer(ckpt)) != data.fingerprint:
            raise ConfigError(f"checkpoint step{ckpt.step} of {cfg.model} has another tokenizer than step"
                              f"{suite[0].step}; evaluate suites whose checkpoints share one tokenizer")
        model = load_model(ckpt, device)
        te = time.perf_counter()
        t_load += te - tl
        metrics = evaluate_model(model, data, names, required(cfg.batch_size, "batch_size"), device, amp)
        t_eval += time.perf_counter() - te
        del model  # one checkpoint in memory at a time
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        table.add(ckpt.step, time.perf_counter() - start, metrics, np.full(1, np.nan))
        if out is not None and writer is not None:
            writer.write(table)
            _save_state(out, table.steps, time.perf_counter() - start)
        _publish(subscribers, {"type": "checkpoint", "step": ckpt.step, "wall_time": table.wall[-1],
                               "rows": checkpoint_rows(table)})
        _publish(subscribers, {"type": "progress", "step": ckpt.step, "total": final,
                               "elapsed": time.perf_counter() - start})
        if bar is not None:
            bar.update(1)
            i = names.index("real") if "real" in names else 0
            bar.set_postfix({"step": ckpt.step, names[i]: f"{metrics['loss'][i, 0]:.3f}"})
    if bar is not None:
        bar.close()
    timings = {"train_s": t_load, "eval_s": t_eval, "total_s": time.perf_counter() - t0}  # train_s: loading
    last = table.steps[-1] if table.steps else 0
    _publish(subscribers, {"type": "done", "status": status, "step": last, "timings": timings})
    return TrainResult(table.to_dataset(), status, out, timings)


def _state_path(out: Path) -> Path:
    return out.with_name(out.stem + ".state.pt")


def _save_state(out: Path, steps: list[int], elapsed: float) -> None:
    tmp = _state_path(out).with_name(_state_path(out).name + ".tmp")
    torch.save({"steps": torch.tensor(steps, dtype=torch.int64), "elapsed": elapsed}, tmp)
    tmp.replace(_state_path(out))


def is_legacy(attrs: Any, cfg: RunConfig, final: int) -> bool:
    """A results file written before ``final_step`` existed: its config is ``cfg`` with ``steps`` set to
    the suite's last step ``final`` (the asked ``steps`` was not kept)."""
    return "final_step" not in attrs and attrs.get("config") == cfg.replace(steps=final).to_json()


def _prepare_files(out: Path, cfg: RunConfig, table: ResultsTable, data: SuiteData, resume: bool,
                   final: int) -> tuple[ResultsTable, float, bool]:
    """Fresh run: save the probe sets; resume: reload them and the finished checkpoints' rows.
    Returns (table, elapsed seconds, whether the file was in the older form and is upgraded)."""
    probes_path = out.with_name(out.stem + ".probes.pt")
    if resume and out.exists() and _state_path(out).exists():
        ds = load_results(out)
        legacy = is_legacy(ds.attrs, cfg, final)
        if ds.attrs.get("config") != cfg.to_json() and not legacy:
            raise ConfigError(f"{out} was made with another config; drop --resume or use the same options")
        saved = torch.load(probes_path, weights_only=True)
        for p in [*data.probes, data.real]:  # evaluate on exactly the saved probe sets
            object.__setattr__(p, "x", saved[p.name]["x"])
            object.__setattr__(p, "y", saved[p.name]["y"])
        state = torch.load(_state_path(out), weights_only=True)
        resumed = ResultsTable.from_dataset(ds)
        resumed.attrs = dict(table.attrs)  # this run's attrs (equal to the saved ones unless legacy)
        return resumed, float(state["elapsed"]), legacy
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({p.name: {"x": p.x, "y": p.y} for p in [*data.probes, data.real]}, probes_path)
    _state_path(out).unlink(missing_ok=True)
    return table, 0.0, False


def _build(cfg: RunConfig) -> Any:
    raise ConfigError("the checkpoints experiment evaluates saved checkpoints and trains nothing; run it with "
                      "dsb run checkpoints / dsb_widgets.engine.train")


def _validate(cfg: RunConfig) -> None:
    if cfg.seeds != 1:
        raise ConfigError(f"a checkpoint suite is one model per step (got --seeds {cfg.seeds}); pass --seeds 1 "
                          "(--seed picks the probe sets)")
    name = str(cfg.dataset)
    if name.lower().replace("-", "").replace("_", "") not in CORPORA and not Path(name).expanduser().exists():
        raise ConfigError(f"unknown corpus {name!r}; pass --corpus one of {', '.join(CORPORA)} or a path to a "
                          "UTF-8 text file or folder")
    if not is_hub_id(str(cfg.model)):
        _suite(cfg)  # a local folder is checked now; a hub id when the run starts (network)


EXPERIMENT = register_experiment(Experiment(
    name="checkpoints",
    build=_build,
    defaults={"dataset": "tinystories", "model": SUGGESTED_MODELS[0], "steps": 1, "batch_size": 16,
              "probe_size": 128, "probes": CHECKPOINT_PROBES},
    models=SUGGESTED_MODELS,
    probes=CHECKPOINT_PROBES,
    datasets=CORPORA,
    description="pretrained checkpoint suites (Pythia-style step<N>) probed with n-gram data and divergences",
    validate=_validate,
    options=CheckpointOptions,
    driver=evaluate_checkpoints,
    open_models=True,
))
