"""Metrics of a run's last-position logits, one value per prompt.

Every metric maps last-position logits ``[n_prompts, d_vocab]`` to a per-prompt tensor ``[n_prompts]``,
given a `MetricContext` holding the answer and wrong-answer token ids and the clean and corrupt
baselines. Per-prompt values are kept so results can carry bootstrap intervals.

=================  ==========================================================================
name               per-prompt value
=================  ==========================================================================
logit_diff         logit[answer] - logit[wrong]
norm_logit_diff    (logit_diff - mean corrupt logit_diff) / (mean clean - mean corrupt logit_diff)
answer_prob        softmax(logits)[answer]
kl                 KL(clean distribution || patched distribution), in nats
=================  ==========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from interp.errors import InterpError


@dataclass
class MetricContext:
    """What metrics need besides the logits."""

    answer: torch.Tensor  # [n] token ids
    wrong: torch.Tensor  # [n] token ids
    clean_logits: torch.Tensor  # [n, d_vocab] last-position logits of the clean run
    corrupt_logits: torch.Tensor  # [n, d_vocab] last-position logits of the corrupt run

    def rows(self, n_rows: int) -> "MetricContext":
        """The context repeated for ``n_rows`` rows laid out patch-major (row r is prompt r % n)."""
        reps = n_rows // len(self.answer)
        return MetricContext(*(t.repeat(reps, *([1] * (t.ndim - 1))) for t in
                               (self.answer, self.wrong, self.clean_logits, self.corrupt_logits)))


def logit_diff(logits: torch.Tensor, ctx: MetricContext) -> torch.Tensor:
    return logits.gather(-1, ctx.answer[:, None])[:, 0] - logits.gather(-1, ctx.wrong[:, None])[:, 0]


def norm_logit_diff(logits: torch.Tensor, ctx: MetricContext) -> torch.Tensor:
    clean = logit_diff(ctx.clean_logits, ctx).mean()
    corrupt = logit_diff(ctx.corrupt_logits, ctx).mean()
    if torch.isclose(clean, corrupt):
        raise InterpError("norm_logit_diff is undefined: the clean and corrupt logit differences are equal; use logit_diff")
    return (logit_diff(logits, ctx) - corrupt) / (clean - corrupt)


def answer_prob(logits: torch.Tensor, ctx: MetricContext) -> torch.Tensor:
    return logits.float().softmax(-1).gather(-1, ctx.answer[:, None])[:, 0]


def kl(logits: torch.Tensor, ctx: MetricContext) -> torch.Tensor:
    clean = ctx.clean_logits.float().log_softmax(-1)
    return (clean.exp() * (clean - logits.float().log_softmax(-1))).sum(-1)


METRICS: dict[str, Callable[[torch.Tensor, MetricContext], torch.Tensor]] = {
    "logit_diff": logit_diff,
    "norm_logit_diff": norm_logit_diff,
    "answer_prob": answer_prob,
    "kl": kl,
}


def get_metric(name: str) -> Callable[[torch.Tensor, MetricContext], torch.Tensor]:
    """The metric called ``name``; an `InterpError` listing the valid names otherwise."""
    try:
        return METRICS[name]
    except KeyError:
        raise InterpError(f"unknown metric '{name}': use one of {', '.join(METRICS)}") from None


def check_finite(values: torch.Tensor, where: str) -> torch.Tensor:
    """``values``, or a one-line error when any is NaN or infinite, naming ``where`` (a site, a setting, a run)."""
    bad = ~torch.isfinite(values)
    if bad.any():
        first = tuple(int(i) for i in bad.nonzero()[0].tolist())
        raise InterpError(f"the metric is not finite ({values[first].item()}) at {where}, index {first}: the model's "
                          "numbers overflowed or an input (a vector, a coefficient, a direction) was not finite")
    return values
