"""Static Plotly figures shared by the notebooks (views only; no training, no math)."""

from __future__ import annotations

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
import torch


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
