"""What each probe means, for every view: its family (DSB / edit / measurement), a one-line
explainer, and an intro per experiment. Pure Python (no Panel/Bokeh).

Families (Belrose et al., ICML 2024):

- ``dsb``: data that keep only the statistics up to some order (max-entropy samples, Gaussian
  clones, n-gram sequences, factored-attention clones) plus the real data. The DSB shows as a
  U-shape of the *loss* on them: it falls while the network uses only those statistics, and
  rises once it uses higher-order ones. Drawn together on a log-y loss panel.
- ``edit``: real test inputs of class a whose low-order statistics were moved onto class b (OT,
  CQN, mean shift). The claim is about the *target* label b: accuracy on b rises early (the
  network reads the moved statistics) and falls later. Their loss on the *source* label a is not
  a DSB curve (it rises to large values exactly when the edit "works"), so views show the
  target-label accuracy and loss, never the source-label loss next to the DSB probes.
- ``measure``: per-checkpoint predictions that are not data sets (Taylor terms of the loss),
  drawn dashed on the DSB panel.
- ``divergence``: KL / JS divergence between the model's next-token distribution and an n-gram
  predictor on real text (``kl_<n>``, ``js_<n>``): their own panel (nats/token, not a loss).

Family of a probe in a results Dataset: :func:`dsb_widgets.engine.results.probe_kinds`; of a
live run: :func:`kind_of` (name and whether its rows carry a target accuracy).
"""

from __future__ import annotations

import math
import re
from typing import Mapping, Sequence

KINDS = ("dsb", "edit", "measure", "divergence")

EXPLAIN: dict[str, str] = {
    "real": "held-out real data (every statistic): its loss should fall throughout training.",
    "maxent1": "keeps only class means (order 1): a rise means the network now uses more than the means.",
    "maxent2": "keeps class means and covariances (order 2): a rise means it uses statistics beyond the covariance.",
    "maxent2_cube": "class means and covariances on the pixel cube [0, 1] (Belrose's sigmoid samples, order 2): "
                    "a rise means it uses statistics beyond the covariance.",
    "maxent3": "adds third moments in each class's top principal directions (order 3): rising later than "
               "maxent2 = the network learns third-order statistics after second-order ones.",
    "gauss_clone": "Gaussian-mixture clone (Refinetti et al.), mean + covariance, clamped: "
                   "a rise means the network has left the Gaussian clone it first matched.",
    "ot": "test image of class a moved by Gaussian optimal transport onto class b's mean and covariance: "
          "accuracy on b rising = the network reads order-2 statistics; falling later = it uses higher ones.",
    "cqn": "test image of class a with each pixel's quantiles moved onto class b (order-1 marginals): "
           "accuracy on b rising then falling is the DSB.",
    "shift": "test image of class a shifted per pixel onto class b's mean (order 1): accuracy on b rising "
             "then falling is the DSB.",
    "unigram": "tokens drawn i.i.d. from the train unigram frequencies (order 1): a rise above its dotted "
               "floor means the model relies on context the sequence does not have.",
    "bigram": "Markov chain of the train bigram counts (order 2): a rise means it uses more than the previous token.",
    "trigram": "order-2 Markov chain (trigram counts, order 3): a rise means it uses more than two tokens back.",
    "shuffled": "real test windows with their tokens permuted (keeps each window's bag of words, destroys "
                "order): a rise means the model relies on word order.",
    "taylor0": "Taylor prediction of the max-ent loss from class means alone (not a data set).",
    "taylor2": "Taylor prediction from class means and covariances (not a data set): "
               "maxent2 leaving it = the network uses higher moments.",
    "taylor4": "Taylor prediction including the fourth-order term (not a data set).",
}

INTRO: dict[str, str] = {
    "images": (
        "**Image classifiers learn statistics of increasing complexity** (Belrose et al., ICML 2024; "
        "Refinetti et al., ICML 2023). *Top:* loss on data that keep only class means (order 1) or "
        "means and covariances (order 2), with real test images in black. Early in training the "
        "network does nearly as well on them as on real data; later its loss on them rises "
        "(a U-shape, minimum starred) because it starts using higher-order structure. "
        "*Edit panel:* test images of class a moved onto the low-order statistics of class b: "
        "accuracy on the *target* b rises, then falls."),
    "text": (
        "**Language models learn n-gram statistics in order** (Belrose et al., ICML 2024). Loss "
        "(nats/token) on sequences sampled from the training text's unigram, bigram and trigram "
        "statistics, with real text in black and each n-gram's best achievable loss (its entropy "
        "rate) dotted. The model first approaches the unigram floor, then the unigram loss rises "
        "as it learns to use context; bigram then trigram follow later."),
    "clones": (
        "**A BERT learns low-order token interactions first** (Rende et al., NeurIPS 2024). Loss on "
        "clones of the corpus sampled from factored-attention models with 3, 9, ... body "
        "interactions, real text in black: the low-order clones are fitted first and their loss "
        "saturates (or rises) while the loss on real text keeps falling."),
}

_CLONE = re.compile(r"^(\d+)-body$")


def explain(probe: str) -> str:
    """One line: what the probe keeps and what a rise of its curve means."""
    if probe in EXPLAIN:
        return EXPLAIN[probe]
    m = _CLONE.match(probe)
    if m:
        return (f"MH samples of a factored-attention MLM with up to {m.group(1)}-body interactions: "
                f"its loss saturating or rising means the BERT uses interactions beyond {m.group(1)} bodies.")
    if probe.startswith("taylor"):
        return "Taylor-expansion term of the loss (a prediction, not a data set)."
    m = re.match(r"^(kl|js)_(\w+)$", probe)
    if m:
        what = "KL(n-gram || model)" if m.group(1) == "kl" else "Jensen-Shannon divergence"
        return (f"{what} to the train {m.group(2)} predictor on real text: falling = the model matches "
                f"{m.group(2)} statistics; rising later = it moves beyond them.")
    return "probe set (no description)."


def intro(experiment: str, description: str = "") -> str:
    """Markdown intro of an experiment (its own, never another experiment's)."""
    if experiment in INTRO:
        return INTRO[experiment]
    return f"**{experiment}**: {description}" if description else f"**{experiment}**"


def kind_of(probe: str, has_target: bool) -> str:
    """Family of one probe from its name and whether it has a target label."""
    if has_target:
        return "edit"
    if probe.startswith("taylor"):
        return "measure"
    if probe.startswith(("kl_", "js_")):
        return "divergence"
    return "dsb"


def split(probes: Sequence[str], kinds: Mapping[str, str]) -> tuple[list[str], list[str], list[str]]:
    """(dsb, edit, measure) probe lists, keeping the given order."""
    return ([p for p in probes if kinds.get(p, "dsb") == "dsb"],
            [p for p in probes if kinds.get(p) == "edit"],
            [p for p in probes if kinds.get(p) == "measure"])


def order_text(order: float) -> str:
    if math.isinf(order):
        return "real"
    if math.isnan(order):
        return "?"
    return f"{order:g}"
