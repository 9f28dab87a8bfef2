"""Retrieval heads (Wu et al. 2024): attention heads that copy a needle out of a long context.

Detection (`detect_retrieval_heads`). Each `NeedlePrompt` is decoded greedily: all prompt tokens but
the last are prefilled into a KV cache (no attention read), then every decode step runs one token
through `interp.Model.run_cached` and reads ``attn_pattern.L`` for every layer (the new token's row
over all keys). When the step produces token ``w``, head (l, h) scores a *copy event* if its
top-attended key lies in the needle span and holds ``w``. A test's head score is
events / needle length; a head's retrieval score is the mean over *successful* tests (ROUGE-1
recall of the response against the needle sentence > 0.5). Retrieval head <=> score > 0.1.
Decoding stops after ``max_new_tokens`` or at a token containing a newline / end of text.

Masking (`masking_curve`). A masked head attends uniformly to every key it can see, only while
decoding (the prefill is unmasked). `UniformAttention` implements this without touching the
attention kernel: with uniform weights a head's output z is the plain mean of its value vectors
over the visible keys, so the edit replaces ``head_out.L[:, :, h]`` (z, before W_O) by the causal
mean of the values that the KV cache holds for layer L (GQA: query head h reads kv head
h // (n_heads / n_kv_heads)). The attention forward has already appended the new token's value to
the cache when ``head_out`` (the input of ``o_proj``) is reached, so the mean includes it, exactly
as softmax over all-equal scores would. Recall (mean ROUGE-1 recall) is compared between masking
the top-k heads by score and k random heads drawn from the heads that are neither in the top k nor
above the retrieval threshold (the reference code meant to exclude them but did not).

ROUGE-1 recall here is plain unigram recall over lower-cased alphanumeric words (no stemming).
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from interp.circuits.haystack import NeedlePrompt
from interp.errors import InterpError
from interp.interventions import Intervention
from interp.model import Model

SUCCESS_RECALL = 0.5  # a test counts for detection when ROUGE-1 recall > this
RETRIEVAL_THRESHOLD = 0.1  # retrieval head <=> mean score > this
PREFILL_CHUNK = 1024  # prefill in chunks so eager attention never holds a [S, S] matrix per layer


def rouge1_recall(response: str, reference: str) -> float:
    """Unigram recall of ``reference`` by ``response`` (lower-cased alphanumeric words, clipped counts).

    >>> rouge1_recall("a green umbrella", "A small green umbrella.")
    0.75
    """
    ref = Counter(re.findall(r"[a-z0-9]+", reference.lower()))
    if not ref:
        raise InterpError("ROUGE-1 recall needs a reference with at least one word")
    got = Counter(re.findall(r"[a-z0-9]+", response.lower()))
    return sum(min(n, got[w]) for w, n in ref.items()) / sum(ref.values())


def _cached_values(past, layer: int) -> torch.Tensor:
    """Values [batch, kv_heads, seq, d_head] that the KV cache holds for ``layer``."""
    if hasattr(past, "layers"):
        return past.layers[layer].values
    if hasattr(past, "value_cache"):
        return past.value_cache[layer]
    raise InterpError(f"cannot read values from a KV cache of type {type(past).__name__}")


@dataclass(frozen=True)
class UniformAttention(Intervention):
    """Uniform attention for ``heads`` at ``site`` (``head_out.L``), inside a `Model.run_cached` step with ``past``.

    Row q of a chunk of P new tokens sees keys 0..S-P+q of the S cached ones; its z becomes the mean
    of those values. Pass the same cache object to `Model.run_cached`.
    """

    heads: tuple[int, ...] = ()
    past: object = field(default=None, compare=False)

    def apply(self, act: torch.Tensor) -> torch.Tensor:
        if not self.site.startswith("head_out."):
            raise InterpError(f"UniformAttention edits head_out.L, not '{self.site}'")
        if self.past is None:
            raise InterpError("UniformAttention needs the KV cache of the run (use it with Model.run_cached)")
        values = _cached_values(self.past, int(self.site.split(".")[1]))  # [b, kv, S, d]
        _, n_new, n_heads, _ = act.shape
        total = values.shape[2]
        if total < n_new:
            raise InterpError(f"the cache holds {total} values but the step has {n_new} new tokens; "
                              "is it a sliding-window layer or a different cache?")
        n_rep = n_heads // values.shape[1]
        csum = values.float().cumsum(2)[:, :, total - n_new:]  # [b, kv, P, d]
        count = torch.arange(total - n_new + 1, total + 1, device=act.device, dtype=torch.float32)
        means = (csum / count[:, None]).to(act.dtype)
        out = act.clone()
        for h in self.heads:
            if not 0 <= h < n_heads:
                raise InterpError(f"head {h} is out of range: this layer has heads 0..{n_heads - 1}")
            out[:, :, h] = means[:, h // n_rep]
        return out


def uniform_attention(heads: Sequence[tuple[int, int]], past) -> list[UniformAttention]:
    """One `UniformAttention` per layer for the (layer, head) pairs in ``heads``."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(int(layer), []).append(int(head))
    return [UniformAttention(f"head_out.{layer}", tuple(hs), past) for layer, hs in sorted(by_layer.items())]


@dataclass
class Decoded:
    """One greedy decode: generated token ids, their text, and copy events per head [layer, head]."""

    tokens: list[int]
    text: str
    events: torch.Tensor | None  # None when attention was not read


def prefill(model: Model, prompt: NeedlePrompt, chunk: int = PREFILL_CHUNK):
    """KV cache of all prompt tokens but the last (unmasked, no reads)."""
    ids = torch.tensor([prompt.ids[:-1]], device=model.device)
    past = None
    for start in range(0, ids.shape[1], chunk):
        _, past = model.run_cached(ids[:, start:start + chunk], past=past)
    return past


def _stops(model: Model, token: int) -> bool:
    return token == model.tokenizer.eos_token_id or "\n" in model.tokenizer.decode([token])


def decode(model: Model, prompt: NeedlePrompt, max_new_tokens: int = 30, masked: Sequence[tuple[int, int]] = (),
           track: bool = True, past=None) -> Decoded:
    """Greedy decode after ``prompt`` with ``masked`` heads attending uniformly; count copy events if ``track``.

    ``past`` is a prefill cache from `prefill` (it is copied, never changed); None prefills here.
    """
    past = copy.deepcopy(past) if past is not None else prefill(model, prompt)
    read = [f"attn_pattern.{layer}" for layer in range(model.n_layers)] if track else []
    start, end = prompt.needle_span
    seq = list(prompt.ids)
    events = torch.zeros(model.n_layers, model.n_heads) if track else None
    generated: list[int] = []
    for _ in range(max_new_tokens):
        out, past = model.run_cached(torch.tensor([seq[-1:]], device=model.device), uniform_attention(masked, past),
                                     read, past)
        token = int(out.logits[0, -1].argmax())
        generated.append(token)
        if track:
            rows = torch.stack([out.acts[s][0, :, -1] for s in read])  # [layer, head, keys]
            top = rows.argmax(-1).cpu()
            in_needle = (top >= start) & (top < end)
            held = torch.tensor(prompt.ids)[top.clamp(start, end - 1)]
            events += (in_needle & (held == token)).float()
        seq.append(token)
        if _stops(model, token):
            break
    return Decoded(generated, model.tokenizer.decode(generated, skip_special_tokens=True), events)


@dataclass
class RetrievalScores:
    """Detection result. ``head_score`` [layer, head] is the tensor ``retrieval/head_score``.

    ``per_test`` [test, layer, head] holds each test's events / needle length; ``recall`` [test] the
    ROUGE-1 recall of each response; ``success`` [test] which tests entered the mean.
    """

    head_score: torch.Tensor
    per_test: torch.Tensor
    recall: torch.Tensor
    success: torch.Tensor
    responses: list[str]
    threshold: float = RETRIEVAL_THRESHOLD

    @property
    def n_success(self) -> int:
        return int(self.success.sum())

    def fraction_above(self, threshold: float | None = None) -> float:
        """Fraction of all heads whose score exceeds ``threshold`` (default: the retrieval threshold)."""
        t = self.threshold if threshold is None else threshold
        return float((self.head_score > t).float().mean())

    def top(self, k: int) -> list[tuple[int, int]]:
        """The ``k`` highest-scoring heads as (layer, head), best first."""
        n_heads = self.head_score.shape[1]
        order = self.head_score.flatten().argsort(descending=True, stable=True)[:k]
        return [(int(i) // n_heads, int(i) % n_heads) for i in order]

    def retrieval_heads(self) -> list[tuple[int, int]]:
        """Heads with score > threshold, best first."""
        return self.top(int((self.head_score > self.threshold).sum()))

    def plot(self):
        """The [layer, head] heatmap of retrieval scores (plotly figure)."""
        from interp.plots import heatmap

        n_layers, n_heads = self.head_score.shape
        return heatmap(self.head_score, [str(h) for h in range(n_heads)], [str(l) for l in range(n_layers)],
                       f"retrieval score ({self.n_success} successful tests)", "head", "layer", "score", zmid=None)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"retrieval/head_score": self.head_score, "retrieval/test_recall": self.recall,
                "retrieval/test_success": self.success.float()}


def detect_retrieval_heads(model: Model, prompts: Sequence[NeedlePrompt], max_new_tokens: int = 30,
                           success_recall: float = SUCCESS_RECALL, threshold: float = RETRIEVAL_THRESHOLD) -> RetrievalScores:
    """Retrieval score of every head from greedy decoding of ``prompts`` (see the module docstring)."""
    if not prompts:
        raise InterpError("retrieval-head detection needs at least one needle prompt")
    per_test, recall, responses = [], [], []
    for prompt in prompts:
        out = decode(model, prompt, max_new_tokens)
        per_test.append(out.events / (prompt.needle_span[1] - prompt.needle_span[0]))
        recall.append(rouge1_recall(out.text, prompt.answer))
        responses.append(out.text)
    per_test_t, recall_t = torch.stack(per_test), torch.tensor(recall)
    success = recall_t > success_recall
    head_score = per_test_t[success].mean(0) if success.any() else torch.zeros(model.n_layers, model.n_heads)
    return RetrievalScores(head_score, per_test_t, recall_t, success, responses, threshold)


@dataclass
class MaskingCurve:
    """NIAH recall vs number of masked heads: tensors ``retrieval/k``, ``retrieval/recall_top``, ``retrieval/recall_random``.

    ``recall_random`` averages ``n_random`` draws per k; ``recall_clean`` is the unmasked recall.
    """

    k: torch.Tensor
    recall_top: torch.Tensor
    recall_random: torch.Tensor
    recall_clean: float
    random_heads: list[list[list[tuple[int, int]]]]  # [k][draw] -> heads

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"retrieval/k": self.k, "retrieval/recall_top": self.recall_top, "retrieval/recall_random": self.recall_random}


def random_heads(scores: RetrievalScores, k: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """``k`` random heads, none of them in the top k or above the retrieval threshold."""
    excluded = set(scores.top(k)) | set(scores.retrieval_heads())
    n_layers, n_heads = scores.head_score.shape
    pool = [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in excluded]
    if k > len(pool):
        raise InterpError(f"cannot draw {k} random heads: only {len(pool)} heads are outside the top/retrieval heads")
    return [pool[int(i)] for i in torch.randperm(len(pool), generator=generator)[:k]]


def masking_curve(model: Model, prompts: Sequence[NeedlePrompt], scores: RetrievalScores, ks: Sequence[int],
                  n_random: int = 1, max_new_tokens: int = 30, seed: int = 0) -> MaskingCurve:
    """Mean ROUGE-1 recall over ``prompts`` with the top-k vs k random heads attending uniformly while decoding."""
    if not prompts:
        raise InterpError("the masking experiment needs at least one needle prompt")
    if any(k < 0 for k in ks) or n_random < 1:
        raise InterpError(f"k must be >= 0 and n_random >= 1, got ks={list(ks)} n_random={n_random}")
    gen = torch.Generator().manual_seed(seed)
    draws = [[random_heads(scores, k, gen) for _ in range(n_random)] for k in ks]
    clean, top, rand = [], torch.zeros(len(ks), len(prompts)), torch.zeros(len(ks), len(prompts))
    for j, prompt in enumerate(prompts):
        past = prefill(model, prompt)

        def recall(heads, prompt: NeedlePrompt = prompt, past=past) -> float:
            return rouge1_recall(decode(model, prompt, max_new_tokens, heads, False, past).text, prompt.answer)

        base = recall(())
        clean.append(base)
        for i, k in enumerate(ks):
            top[i, j] = recall(scores.top(k)) if k else base
            rand[i, j] = sum(recall(d) if k else base for d in draws[i]) / n_random
    return MaskingCurve(torch.tensor(list(ks)), top.mean(1), rand.mean(1), sum(clean) / len(clean), draws)
