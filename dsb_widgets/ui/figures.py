"""Static Plotly figures shared by the notebooks (views only; no training, no math)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
import torch

if TYPE_CHECKING:
    import xarray


def image_grid(x: torch.Tensor, rows: list[str], cols: int, title: str, row_height: int = 110) -> go.Figure:
    """x: (len(rows) * cols, C, H, W) in [0, 1] -> a Plotly grid, one labelled row per group.

    Values are clipped to [0, 1] for display only; one channel is drawn in grey.
    """
    img = x.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()  # (n, H, W, C)
    if img.shape[-1] == 1:
        fig = px.imshow(img[..., 0], facet_col=0, facet_col_wrap=cols, color_continuous_scale="gray",
                        zmin=0, zmax=1, facet_row_spacing=0.02, facet_col_spacing=0.01)
        fig.update_coloraxes(showscale=False)
    else:
        fig = px.imshow((img * 255).astype(np.uint8), facet_col=0, facet_col_wrap=cols,
                        facet_row_spacing=0.02, facet_col_spacing=0.01)
    fig.for_each_annotation(lambda a: a.update(text=""))
    for r, label in enumerate(rows):
        fig.add_annotation(text=label, xref="paper", yref="paper", x=-0.01, xanchor="right", font=dict(size=10),
                           y=1 - (r + 0.5) / len(rows), showarrow=False, textangle=-90)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(title=title, height=row_height * len(rows) + 60, margin=dict(l=60, r=10, t=50, b=10))
    return fig


def _ticks(lo: float, hi: float) -> list[float]:
    """Decade ticks 10^k (plus 2x and 5x when fewer than three decades) inside [lo, hi]."""
    import math

    k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    mult = (1.0,) if k1 - k0 >= 3 else (1.0, 2.0, 5.0)
    return [m * 10.0 ** k for k in range(k0, k1 + 1) for m in mult if lo <= m * 10.0 ** k <= hi]


def static_curves_svg(ds: xarray.Dataset, kinds: tuple[str, ...] = ("dsb",), width: int = 760,
                      height: int = 380, title: str = "") -> str:
    """A static SVG of seed-mean loss vs step (log-log), one polyline per probe of ``kinds``,
    colours from :mod:`dsb_widgets.ui.colors`, each probe's minimum starred, floors dotted.

    Pure Python (no browser, no kaleido): the fallback that an executed notebook keeps as an
    ``image/svg+xml`` output, so a saved copy reads on GitHub / nbviewer where Plotly and Panel
    outputs (JavaScript) stay blank.
    """
    import html
    import math

    from dsb_widgets.engine.results import probe_kinds
    from dsb_widgets.ui.colors import probe_colors

    kind_of = probe_kinds(ds)
    probes = [str(p) for p in ds["probe"].values if kind_of[str(p)] in kinds]
    orders = [float(ds["probe_order"].sel(probe=p)) for p in probes]
    colours = probe_colors(probes, orders)
    x = np.asarray(ds["step"].values, dtype=float) + 1.0
    mean = ds["loss"].mean("seed")
    curves = {p: np.asarray(mean.sel(probe=p).values, dtype=float) for p in probes}
    floors = {p: float(ds["floor"].sel(probe=p)) for p in probes} if "floor" in ds.coords else {}
    ys = [v for c in curves.values() for v in c if np.isfinite(v) and v > 0]
    ys += [f for f in floors.values() if math.isfinite(f) and f > 0]
    if not ys or len(x) == 0:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="40">'
                '<text x="8" y="24">no data</text></svg>')
    y0, y1 = min(ys) / 1.15, max(ys) * 1.15
    x0, x1 = 1.0, max(float(x[-1]), 2.0)
    left, right, top, bottom = 64, 170, 30, 46
    pw, ph = width - left - right, height - top - bottom

    def px(v: float) -> float:
        return left + pw * math.log(v / x0) / math.log(x1 / x0)

    def py(v: float) -> float:
        return top + ph * (1 - math.log(v / y0) / math.log(y1 / y0))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="11"><rect width="100%" height="100%" fill="white"/>',
           f'<text x="{left}" y="18" font-size="13" font-weight="bold">{html.escape(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for t in _ticks(x0, x1):
        out.append(f'<line x1="{px(t):.1f}" y1="{top}" x2="{px(t):.1f}" y2="{top + ph}" stroke="#eee"/>'
                   f'<text x="{px(t):.1f}" y="{top + ph + 14}" text-anchor="middle">{t:g}</text>')
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + pw}" y2="{py(t):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 4}" y="{py(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">training step + 1 (log)</text>'
               f'<text transform="translate(14 {top + ph / 2}) rotate(-90)" text-anchor="middle">'
               'loss (nats, log)</text>')
    for i, p in enumerate(probes):
        c, y = colours[p], curves[p]
        ok = np.isfinite(y) & (y > 0)
        pts = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(x[ok], y[ok]))
        out.append(f'<polyline class="curve" data-probe="{html.escape(p)}" points="{pts}" fill="none" '
                   f'stroke="{c}" stroke-width="2"/>')
        f = floors.get(p, math.nan)
        if math.isfinite(f) and f > 0:
            out.append(f'<line class="floor" x1="{left}" y1="{py(f):.1f}" x2="{left + pw}" y2="{py(f):.1f}" '
                       f'stroke="{c}" stroke-dasharray="2,3"/>')
        if ok.any():
            j = int(np.nanargmin(np.where(ok, y, np.nan)))
            if j < len(y) - 1:  # a minimum inside the run
                out.append(f'<text class="min" x="{px(x[j]):.1f}" y="{py(y[j]) + 5:.1f}" text-anchor="middle" '
                           f'font-size="16" fill="{c}">&#9733;</text>')
        ly = top + 12 + 16 * i
        out.append(f'<line x1="{left + pw + 10}" y1="{ly - 4}" x2="{left + pw + 30}" y2="{ly - 4}" stroke="{c}" '
                   f'stroke-width="2"/><text x="{left + pw + 36}" y="{ly}">{html.escape(p)}</text>')
    out.append("</svg>")
    return "".join(out)
