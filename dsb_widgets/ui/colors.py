"""One colour map for every view (dashboard, notebooks, static figures): colour = interaction order.

Pure Python (no Bokeh, no Plotly), so notebooks and the CLI import it for free.

Encoding (Belrose et al., ICML 2024, Fig. 1-3; Rende et al., NeurIPS 2024): each interaction
order owns a *family* of hues (order 1 warm oranges, order 2 blues, order 3 greens, up to 9
bodies purples/magentas, beyond that browns), and probes that share an order get *distinct*
hues inside their family, so ``maxent2`` / ``gauss_clone`` / ``ot`` (all order 2) stay apart
while ``bigram`` (order 2, blue) and ``trigram`` (order 3, green) never look alike. Real data
(order ``inf``) is black everywhere. Known probe names have fixed slots, so the same probe has
the same colour in every run, overlay, sweep facet and notebook.

The hues are from the Okabe-Ito and ColorBrewer qualitative sets (colour-blind safe between
families). :func:`probe_colors` is the one entry point; :func:`order_color` gives the first hue
of an order's family (legends that speak about orders, not probes).

>>> probe_colors(["real", "maxent1", "maxent2", "gauss_clone"])["real"]
'#000000'
>>> c = probe_colors(["maxent2", "gauss_clone", "ot"], [2.0, 2.0, 2.0]); len(set(c.values()))
3
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

REAL_COLOR = "#000000"
UNKNOWN_COLOR = "#888888"

# Families of hues, one per order bucket; distinct hues inside each.
FAMILIES: dict[str, tuple[str, ...]] = {
    "1": ("#E69F00", "#D55E00", "#B8860B", "#F4A582"),  # orange, vermillion, dark gold, salmon
    "2": ("#0072B2", "#56B4E9", "#3F37C9", "#1B9E9E"),  # blue, sky, indigo, teal
    "3": ("#009E73", "#66A61E", "#1B7837", "#A6D96A"),  # green, lime, forest, pale green
    "<=9": ("#CC79A7", "#7B3294", "#E7298A", "#9E5FB5"),  # pink, purple, magenta, lilac
    ">9": ("#8C510A", "#BF812D", "#543005", "#A6761D"),  # browns
}

# Fixed slots (family, index) of the probes the experiments build, so colours never depend on
# which probes a run happens to include.
KNOWN: dict[str, int] = {
    "maxent1": 0, "unigram": 0, "cqn": 1, "shift": 2, "shuffled": 2, "kl_unigram": 0, "js_unigram": 1,
    "maxent2": 0, "bigram": 0, "gauss_clone": 1, "ot": 2, "maxent2_cube": 3, "kl_bigram": 0, "js_bigram": 1,
    "maxent3": 0, "trigram": 0, "kl_trigram": 0, "js_trigram": 1,
}


def family(order: float) -> str | None:
    """Name of the hue family of ``order`` (None for real data / unknown)."""
    if math.isnan(order) or math.isinf(order):
        return None
    if order <= 1:
        return "1"
    if order <= 2:
        return "2"
    if order <= 3:
        return "3"
    return "<=9" if order <= 9 else ">9"


def order_color(order: float) -> str:
    """First hue of ``order``'s family; black for real data (inf), grey for unknown (NaN)."""
    if math.isinf(order):
        return REAL_COLOR
    fam = family(order)
    return FAMILIES[fam][0] if fam else UNKNOWN_COLOR


def probe_colors(probes: Sequence[str], orders: Sequence[float] | None = None) -> dict[str, str]:
    """Colour per probe: black for real data, else a hue of its order's family.

    ``orders`` default to the experiments' known orders (by name). Known names keep their fixed
    slot; other probes take the next free hue of their family, in the given order.
    """
    if orders is None:
        orders = [default_order(p) for p in probes]
    if len(orders) != len(probes):
        raise ValueError(f"{len(probes)} probes but {len(orders)} orders; pass one order per probe")
    out: dict[str, str] = {}
    used: dict[str, set[int]] = {}
    pending: list[tuple[str, str]] = []
    for p, o in zip(probes, orders):
        o = float(o)
        if math.isinf(o):
            out[p] = REAL_COLOR
            continue
        fam = family(o)
        if fam is None:
            out[p] = UNKNOWN_COLOR
        elif p in KNOWN and KNOWN[p] not in used.setdefault(fam, set()):
            used[fam].add(KNOWN[p])
            out[p] = FAMILIES[fam][KNOWN[p]]
        else:
            pending.append((p, fam))
    for p, fam in pending:
        taken = used.setdefault(fam, set())
        free = [i for i in range(len(FAMILIES[fam])) if i not in taken]
        i = free[0] if free else len(taken) % len(FAMILIES[fam])
        taken.add(i)
        out[p] = FAMILIES[fam][i]
    return {p: out[p] for p in probes}


_DEFAULT_ORDERS: Mapping[str, float] = {
    "real": math.inf, "maxent1": 1.0, "maxent2": 2.0, "gauss_clone": 2.0, "ot": 2.0, "cqn": 1.0,
    "unigram": 1.0, "bigram": 2.0, "trigram": 3.0, "shuffled": 1.0, "maxent3": 3.0, "maxent2_cube": 2.0,
    "shift": 1.0,
}


def default_order(probe: str) -> float:
    """The interaction order the built-in experiments give ``probe`` (NaN if unknown)."""
    return float(_DEFAULT_ORDERS.get(probe, math.nan))


def rgba(hex_color: str, alpha: float) -> str:
    """'#RRGGBB' -> 'rgba(r, g, b, alpha)' (Plotly band fills)."""
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"
