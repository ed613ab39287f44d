"""What the scripts here share: the clone folder's corpus and raw probe sequences (sat_run.py,
sat_eval.py), and the engine task of a clone folder timed by bench_readout.py / bench_probe_readout.py."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import torch

from dsb_widgets.clones import load_clones, windows
from dsb_widgets.data.text import TokenizedCorpus, tokenize_corpus
from dsb_widgets.engine.task import RunConfig, Task, build_task, resolve_config

PROBE_SEED = 1234  # real test windows: independent of the training seed


@dataclass(frozen=True)
class CloneProbes:
    corpus: TokenizedCorpus
    vocab: int  # V
    context: int  # T
    raw: dict[str, torch.Tensor]  # probe name ("real", "2-body", ...) -> (n, T) int64 sequences
    test_pll: dict[str, float | None]  # clone name -> its generator's held-out PLL (provenance)


def load_probes(clones: str, data_dir: str, n: int) -> CloneProbes:
    """The real corpus of a ``dsb clone`` folder, ``n`` real test windows and the first ``n``
    sequences of every clone order."""
    cl = load_clones(clones)
    prov = cl.provenance
    cc = prov["config"]
    T = int(prov["context"])
    tc = tokenize_corpus(str(prov["corpus"]), tokenizer=str(cc["tokenizer"]), vocab_size=int(cc["vocab_size"]),
                         data_dir=data_dir, max_train_chars=cc.get("max_train_chars"))
    assert tc.token_strings == cl.token_strings
    raw = {"real": windows(tc.test, T, n, torch.Generator().manual_seed(PROBE_SEED))}
    for L in sorted(cl.tokens):
        raw[f"{cl.bodies[L]}-body"] = cl.tokens[L][:n]
    pll = {f"{cl.bodies[L]}-body": prov["orders"][str(L)].get("test_pll") for L in cl.tokens}
    return CloneProbes(tc, tc.vocab_size, T, raw, pll)


def bench_parser(doc: str) -> argparse.ArgumentParser:
    """The options every read-out benchmark takes: ``--clones DIR``, ``--data-dir``, ``--seeds``."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--clones", required=True, help="folder written by `dsb clone`")
    ap.add_argument("--data-dir", default=os.environ.get("DSB_DATA_DIR"))
    ap.add_argument("--seeds", type=int, default=1, help="seeds stacked in one run")
    return ap


def clones_task(a: argparse.Namespace) -> tuple[RunConfig, Task]:
    """The clones experiment's task at its defaults for ``a.clones`` on one CPU thread."""
    torch.set_num_threads(1)
    cfg = resolve_config(RunConfig(experiment="clones", seeds=a.seeds, device="cpu", data_dir=a.data_dir,
                                   options={"clones": a.clones}))
    return cfg, build_task(cfg)
