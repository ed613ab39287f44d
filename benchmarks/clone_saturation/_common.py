"""What sat_run.py and sat_eval.py share: the clone folder's corpus and the raw probe sequences."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dsb_widgets.clones import load_clones, windows
from dsb_widgets.data.text import TokenizedCorpus, tokenize_corpus

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
