"""How well an estimator (AtP, ...) matches activation patching, component by component.

Both grids hold the metric after patching each cell; effects are measured from the base run.
Reported per component: Pearson and Spearman correlation of the effects, and the overlap of the
``k`` cells each ranks highest by absolute effect.
"""

from __future__ import annotations

import torch


def _ranks(x: torch.Tensor) -> torch.Tensor:
    return x.argsort().argsort().to(torch.float64)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two flattened tensors (nan when either is constant)."""
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


def faithfulness(truth: torch.Tensor, estimate: torch.Tensor, base: float, k: int = 10) -> dict:
    """Pearson, Spearman and top-``k`` overlap of ``estimate`` against ``truth`` (mean grids)."""
    t, e = (truth - base).flatten(), (estimate - base).flatten()
    k = min(k, t.numel())
    top_t, top_e = set(t.abs().topk(k).indices.tolist()), set(e.abs().topk(k).indices.tolist())
    return {"pearson": round(pearson(t, e), 4), "spearman": round(pearson(_ranks(t), _ranks(e)), 4),
            f"top{k}_overlap": round(len(top_t & top_e) / k, 4)}
