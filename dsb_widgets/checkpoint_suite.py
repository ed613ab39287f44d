"""Hugging Face checkpoint suites: find them, load them one at a time, and train a toy one offline.

Belrose et al. (ICML 2024, Sec. 5) read the distributional simplicity bias off *pretrained*
checkpoint suites: Pythia saves its weights at steps 0, 1, 2, 4, ..., 512, 1000, 2000, ...,
143000 as hub branches ``step<N>``. A suite here is either

- a hub repository with ``step<N>`` revisions (``EleutherAI/pythia-70m``; needs the internet;
  revisions listed with ``huggingface_hub.list_repo_refs``), or
- a local folder of ``step<N>/`` subfolders, each written by ``save_pretrained`` (model AND
  tokenizer), e.g. by :func:`train_toy_suite` below (works offline).

Loading goes through ``from_pretrained(..., local_files_only=..., weights_only=True)``:
safetensors when the checkpoint has them, otherwise transformers' own ``torch.load`` with
``weights_only=True`` (never unpickling code).

:func:`train_toy_suite` trains a small GPT-NeoX (Pythia's architecture: rotary attention,
parallel residual, untied output) on a corpus's train split and saves step 0 and every power
of two up to ``max_step``. Its tokenizer is byte-level BPE, trained on the same train split
(``tokenizer="bpe"``, vocabulary ``vocab_size``) or GPT-2's (``tokenizer="gpt2"``, from
``<data_dir>/tokenizers/gpt2``); either is saved as a ``PreTrainedTokenizerFast`` beside every
checkpoint, so the experiment reads the model's OWN tokenizer as it would Pythia's. From the
shell: ``python -m dsb_widgets.checkpoint_suite runs/suite --corpus my.txt`` (then
``dsb run checkpoints --model runs/suite --corpus my.txt``).

Measured (2 shared CPU cores, loaded; 2 layers, d = 64, BPE 1024, context 64, batch 32, 512
steps, 231k parameters): training ~45 s CPU, 11 checkpoints of ~1 MB each.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from dsb_widgets.data.tokenizers import split_for_batch
from dsb_widgets.errors import ConfigError, DataNotFoundError

STEP_DIR = re.compile(r"step(\d+)")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
EOS = "<|endoftext|>"


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of a suite: its training step and where ``from_pretrained`` finds it."""

    step: int
    location: str  # local folder, or hub repository id
    revision: str | None = None  # hub branch (``step<N>``); None for local folders

    @property
    def local(self) -> bool:
        return self.revision is None


def is_hub_id(model: str) -> bool:
    """True for ``owner/name`` that is not an existing local path."""
    return not Path(model).expanduser().exists() and bool(_HUB_ID.fullmatch(model))


def local_suite(folder: str | Path) -> list[Checkpoint]:
    """The ``step<N>/`` checkpoints under ``folder``, by ascending N."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"checkpoint folder {root} does not exist; pass --model a folder of step<N>/ "
                                "subfolders (save_pretrained) or a hub id such as EleutherAI/pythia-70m")
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if p.is_dir() and (m := STEP_DIR.fullmatch(p.name)) and (p / "config.json").is_file()]
    if not found:
        raise DataNotFoundError(f"{root} holds no step<N>/ folder with a config.json; save each checkpoint with "
                                "model.save_pretrained(f'{root}/step{N}') and tokenizer.save_pretrained(same)")
    return [Checkpoint(n, str(p)) for n, p in sorted(found)]


def log_spaced(steps: list[int]) -> list[int]:
    """Belrose's Pythia subset: 0, powers of two, 1000 x powers of two, and the last step."""
    def pow2(n: int) -> bool:
        return n > 0 and n & (n - 1) == 0

    keep = {s for s in steps if s == 0 or pow2(s) or (s % 1000 == 0 and pow2(s // 1000))}
    return sorted(keep | ({max(steps)} if steps else set()))


def hub_suite(repo_id: str, revisions: tuple[str, ...] = ()) -> list[Checkpoint]:
    """Checkpoints of a hub repository: the given ``step<N>`` revisions, else the log-spaced set.

    Needs the internet (the revision list comes from ``huggingface_hub.list_repo_refs``); offline
    it fails with one line naming the local-folder option.
    """
    try:
        from huggingface_hub import list_repo_refs

        branches = [b.name for b in list_repo_refs(repo_id).branches]
    except Exception as err:  # noqa: BLE001 - offline, unknown repo, no hub client: one message
        raise DataNotFoundError(
            f"cannot list the revisions of {repo_id!r} on the Hugging Face hub ({type(err).__name__}); offline, "
            "pass --model a local folder of step<N>/ checkpoints saved with save_pretrained (model + tokenizer), "
            "e.g. one written by dsb_widgets.checkpoint_suite.train_toy_suite") from None
    available = {int(m.group(1)): b for b in branches if (m := STEP_DIR.fullmatch(b))}
    if revisions:
        missing = [r for r in revisions if r not in branches]
        if missing:
            raise ConfigError(f"{repo_id} has no revision {missing[0]!r}; choose from e.g. "
                              f"{', '.join(available[s] for s in sorted(available)[:6])}")
        return sorted((Checkpoint(step_of(r), repo_id, r) for r in revisions), key=lambda c: c.step)
    if not available:
        raise ConfigError(f"{repo_id} has no step<N> revisions; pass --revisions explicitly")
    return [Checkpoint(s, repo_id, available[s]) for s in log_spaced(sorted(available))]


def step_of(revision: str) -> int:
    m = STEP_DIR.fullmatch(revision)
    if m is None:
        raise ConfigError(f"revision {revision!r} does not name a training step; pass revisions like step1000")
    return int(m.group(1))


def find_suite(model: str, revisions: tuple[str, ...] = ()) -> list[Checkpoint]:
    """Local folder of ``step<N>/`` (``revisions`` then filter by name) or hub id."""
    if is_hub_id(model):
        return hub_suite(model, revisions)
    suite = local_suite(model)
    if revisions:
        wanted = {step_of(r) for r in revisions}
        suite = [c for c in suite if c.step in wanted]
        if len(suite) != len(wanted):
            raise ConfigError(f"{model} lacks some of the revisions {list(revisions)}; it holds "
                              f"{', '.join(f'step{c.step}' for c in local_suite(model))}")
    return suite


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' per-load progress bars (ours is over checkpoints) and restore them."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load_tokenizer(ckpt: Checkpoint) -> Any:
    """The checkpoint's own fast tokenizer (AutoTokenizer from its folder / revision)."""
    from transformers import AutoTokenizer

    kw: dict[str, Any] = {"local_files_only": ckpt.local}
    if ckpt.revision is not None:
        kw["revision"] = ckpt.revision
    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(ckpt.location, **kw)
    if not getattr(tok, "is_fast", False):
        raise ConfigError(f"{ckpt.location} has no fast tokenizer (tokenizer.json); save one with "
                          "PreTrainedTokenizerFast.save_pretrained")
    return tok


def load_model(ckpt: Checkpoint, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The checkpoint's causal LM in eval mode on ``device`` (safetensors or weights-only loading)."""
    from transformers import AutoModelForCausalLM

    kw: dict[str, Any] = {"local_files_only": ckpt.local, "weights_only": True, "dtype": dtype}
    if ckpt.revision is not None:
        kw["revision"] = ckpt.revision
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(ckpt.location, **kw)
    return model.to(device).eval()  # type: ignore[arg-type]  # transformers' stub of the wrapped .to


def encode(tokenizer: Any, text: str) -> np.ndarray:
    """(n,) int32 ids of ``text`` with no special tokens, encoded in parallel chunks."""
    chunks = split_for_batch(text)
    if not chunks:
        return np.zeros(0, dtype=np.int32)
    encs = tokenizer.backend_tokenizer.encode_batch(chunks, add_special_tokens=False)
    return np.concatenate([np.asarray(e.ids, dtype=np.int32) for e in encs])


def make_tokenizer(kind: str, train_text: str, vocab_size: int = 1024, data_dir: str | None = None) -> Any:
    """A ``PreTrainedTokenizerFast``: byte-level BPE trained on ``train_text`` ("bpe") or GPT-2's ("gpt2")."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    if kind == "bpe":
        tok = ByteLevelBPETokenizer()
        tok.train_from_iterator(split_for_batch(train_text), vocab_size=vocab_size, min_frequency=2,
                                special_tokens=[EOS], show_progress=False)
    elif kind == "gpt2":
        from dsb_widgets.data.common import resolve_data_dir

        root = resolve_data_dir(data_dir)
        folder = root / "tokenizers" / "gpt2" if root is not None else None
        if folder is None or not (folder / "encoder.json").is_file():
            raise DataNotFoundError("the toy suite's gpt2 tokenizer needs <data_dir>/tokenizers/gpt2/{encoder.json,"
                                    "vocab.bpe}; pass --data-dir / set DSB_DATA_DIR, or use tokenizer='bpe'")
        tok = ByteLevelBPETokenizer(str(folder / "encoder.json"), str(folder / "vocab.bpe"))
        tok.add_special_tokens([EOS])
    else:
        raise ConfigError(f"unknown toy-suite tokenizer {kind!r}; use 'bpe' or 'gpt2'")
    return PreTrainedTokenizerFast(tokenizer_object=tok._tokenizer, eos_token=EOS, bos_token=EOS)


def suite_steps(max_step: int) -> list[int]:
    """0 and every power of two up to ``max_step`` (and ``max_step`` itself)."""
    if max_step < 1:
        raise ValueError(f"max_step must be >= 1, got {max_step}")
    return sorted({0, max_step} | {2**k for k in range(int(math.log2(max_step)) + 1)})


@dataclass(frozen=True)
class ToySuite:
    """What :func:`train_toy_suite` wrote: ``folder/step<N>/`` for N in ``steps``."""

    folder: str
    steps: tuple[int, ...]
    corpus: str
    source: str
    tokenizer: str
    vocab_size: int
    parameters: int
    train_tokens: int
    train_s: float
    config: dict[str, Any]


def train_toy_suite(folder: str | Path, corpus: str = "tinystories", data_dir: str | None = None,
                    tokenizer: str = "bpe", vocab_size: int = 1024, max_step: int = 512, n_layer: int = 2,
                    d_model: int = 64, n_head: int = 4, context: int = 64, batch_size: int = 32,
                    lr: float = 1e-3, warmup: int = 32, weight_decay: float = 0.05, seed: int = 0,
                    max_train_chars: int | None = 4_000_000, progress: bool = False) -> ToySuite:
    """Train a tiny GPT-NeoX on ``corpus``'s TRAIN split; save step 0 and powers of two up to ``max_step``.

    AdamW (beta2 0.95, as Belrose/Pythia), linear warm-up then cosine to 10% of ``lr``, random
    windows of ``context`` tokens. Each ``step<N>/`` holds model.safetensors, config.json and
    the tokenizer; ``suite.json`` records the settings and the corpus source.
    """
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from dsb_widgets.data.text import load_corpus

    t0 = time.perf_counter()
    text = load_corpus(corpus, data_dir, max_train_chars=max_train_chars)
    tok = make_tokenizer(tokenizer, text.train_text, vocab_size, data_dir)
    ids = torch.from_numpy(encode(tok, text.train_text).astype(np.int64))
    if ids.numel() <= context:
        raise ConfigError(f"{corpus} has only {ids.numel()} train tokens; pass a smaller context or more text")
    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(vocab_size=len(tok), hidden_size=d_model, num_hidden_layers=n_layer,
                        num_attention_heads=n_head, intermediate_size=4 * d_model,
                        max_position_embeddings=max(context, 128), bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id)
    model = GPTNeoXForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed + 1)
    root = Path(folder).expanduser()
    steps = suite_steps(max_step)

    def save(step: int) -> None:
        with quiet_transformers():
            model.save_pretrained(root / f"step{step}")
            tok.save_pretrained(root / f"step{step}")

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=max_step, desc=f"toy suite on {corpus}", unit="step")
    save(0)
    model.train()
    for step in range(1, max_step + 1):
        frac = (step - 1 - warmup) / max(1, max_step - warmup)
        scale = step / warmup if step <= warmup else 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, frac)))
        for g in opt.param_groups:
            g["lr"] = lr * scale
        starts = torch.randint(ids.numel() - context, (batch_size,), generator=gen)
        x = ids[starts[:, None] + torch.arange(context)]  # (B, T)
        loss = model(input_ids=x, labels=x).loss  # transformers shifts: predicts x[:, 1:] from x[:, :-1]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step in steps:
            model.eval()
            save(step)
            model.train()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    if bar is not None:
        bar.close()
    settings = {"tokenizer": tokenizer, "vocab_size": vocab_size, "max_step": max_step, "n_layer": n_layer,
                "d_model": d_model, "n_head": n_head, "context": context, "batch_size": batch_size, "lr": lr,
                "warmup": warmup, "weight_decay": weight_decay, "seed": seed, "max_train_chars": max_train_chars}
    suite = ToySuite(str(root), tuple(steps), text.name, text.source, tokenizer, len(tok),
                     sum(p.numel() for p in model.parameters()), int(ids.numel()), time.perf_counter() - t0,
                     settings)
    (root / "suite.json").write_text(json.dumps(asdict(suite), indent=2))
    return suite


def main(argv: list[str] | None = None) -> int:
    """``python -m dsb_widgets.checkpoint_suite OUT --corpus C``: train and save a toy suite."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m dsb_widgets.checkpoint_suite",
                                description="Train a toy GPT-NeoX suite; save step0 and every power of two.")
    p.add_argument("out", help="folder for the step<N>/ checkpoints")
    p.add_argument("--corpus", default="tinystories", help="corpus name or path to a UTF-8 text file / folder")
    p.add_argument("--data-dir", help="local data folder (else $DSB_DATA_DIR)")
    p.add_argument("--tokenizer", default="bpe", choices=["bpe", "gpt2"])
    p.add_argument("--vocab-size", type=int, default=1024, help="bpe: vocabulary trained on the train split")
    p.add_argument("--max-step", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    suite = train_toy_suite(args.out, corpus=args.corpus, data_dir=args.data_dir, tokenizer=args.tokenizer,
                            vocab_size=args.vocab_size, max_step=args.max_step, seed=args.seed, progress=True)
    print(f"{suite.folder}: steps {list(suite.steps)}, {suite.parameters:,} parameters, vocab {suite.vocab_size}, "
          f"{suite.train_tokens:,} train tokens, {suite.train_s:.0f} s\n"
          f"next: dsb run checkpoints --model {suite.folder} --corpus {args.corpus} --out {suite.folder}.nc")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
