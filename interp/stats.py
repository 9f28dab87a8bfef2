"""Uncertainty for scores averaged over prompts.

Every score a command reports is a mean over prompts. A percentile bootstrap over prompts says how
much that mean would move with a different sample of prompts of the same kind. Both functions draw
the same resamples for the same seed, so `bootstrap_ci_map` agrees element-wise with
`bootstrap_ci` applied to each element's per-prompt values.
"""

import torch

# Largest number of bootstrap means held at once by `bootstrap_ci_map` (n_boot x chunk of elements).
_MAX_CHUNK_ELEMENTS = 1 << 22


def _check(n: int, n_boot: int, level: float) -> None:
    if n < 1:
        raise ValueError("bootstrap needs at least one prompt, got an empty tensor")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1 (e.g. 0.95), got {level}")


def _resample_weights(n: int, n_boot: int, seed: int) -> torch.Tensor:
    """[n_boot, n] float64: how often each prompt is drawn in each resample, divided by n.

    Multiplying these weights by per-prompt values gives each resample's mean without building
    the [n_boot, n, ...] tensor of resampled values.
    """
    generator = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_boot, n), generator=generator)
    counts = torch.zeros(n_boot, n, dtype=torch.float64)
    counts.scatter_add_(1, idx, torch.ones(n_boot, n, dtype=torch.float64))
    return counts / n


def _bounds(flat: torch.Tensor, n_boot: int, level: float, seed: int) -> torch.Tensor:
    """[2, elements] float64 percentile bounds of the mean over dim 0 of `flat` [prompt, elements]."""
    weights = _resample_weights(flat.shape[0], n_boot, seed)
    alpha = (1.0 - level) / 2.0
    q = torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64)
    chunk = max(1, _MAX_CHUNK_ELEMENTS // n_boot)
    bounds = [torch.zeros(2, 0, dtype=torch.float64)]
    for start in range(0, flat.shape[1], chunk):
        means = weights @ flat[:, start : start + chunk]  # [n_boot, chunk]
        bounds.append(torch.quantile(means, q, dim=0))  # [2, chunk]
    return torch.cat(bounds, dim=1)


def bootstrap_ci_map(
    per_prompt: torch.Tensor, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile-bootstrap interval of the mean over dim 0, for every element at once.

    `per_prompt` is [prompt, ...]; returns (lo, hi), each of shape [...], in the input's float dtype
    (float32 for integer input). The prompt indices are resampled once per draw and shared by all
    elements, exactly as `bootstrap_ci` with the same seed resamples them.
    """
    if per_prompt.ndim == 0:
        raise ValueError("bootstrap_ci_map needs a [prompt, ...] tensor, got a scalar")
    n = per_prompt.shape[0]
    _check(n, n_boot, level)
    dtype = per_prompt.dtype if per_prompt.is_floating_point() else torch.float32
    flat = per_prompt.detach().to("cpu", torch.float64).reshape(n, -1)
    both = _bounds(flat, n_boot, level, seed).to(dtype)
    rest = per_prompt.shape[1:]
    return both[0].reshape(rest), both[1].reshape(rest)


def bootstrap_ci(
    values: torch.Tensor, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of a 1-D tensor and its percentile-bootstrap interval.

    Deterministic for a given seed; a single value gives (v, v, v).
    """
    values = values.detach().to("cpu", torch.float64)
    if values.ndim != 1:
        raise ValueError(f"bootstrap_ci needs a 1-D tensor of per-prompt values, got shape {list(values.shape)}")
    _check(values.shape[0], n_boot, level)
    mean = float(values.mean())
    if values.shape[0] == 1:
        return mean, mean, mean
    lo, hi = _bounds(values.unsqueeze(1), n_boot, level, seed)[:, 0].tolist()
    return mean, lo, hi
