"""Retrieval heads (Wu et al. 2024): attention heads that copy a needle out of a long context.

Detection (`detect_retrieval_heads`). Each `NeedlePrompt` is decoded greedily: all prompt tokens but
the last are prefilled into a KV cache (no attention read), then every decode step runs one token
through the model's torch backend (as `interp.Model.run_cached` does) and reads ``attn_pattern.L`` for every
layer (the new token's row over all keys), reducing each layer's pattern to its top-attended key per head as
the forward reaches it (`TopKeys`), so no step holds more than one layer's pattern, however long the context.
When the step produces token ``w``, head (l, h) scores a *copy event* if its
top-attended key lies in the needle span and holds ``w``. A test's head score is
events / needle length; a head's retrieval score is the mean over *successful* tests (ROUGE-1
recall of the response against the needle sentence > 0.5). Retrieval head <=> score > 0.1.
Decoding stops after ``max_new_tokens`` or at a token containing a newline / end of text.

Batching (`decode_batch`, `length_batches`). Rows per batch come from a memory budget (``max_memory``, None:
a share of the device's free memory; `decode_row_bytes`). NIAH prompts of one context length have the same number of
tokens, so they decode together without padding: each prompt is prefilled on its own, the caches are joined
along the batch axis (`stack_caches`), and one `Model.run_cached` step advances every row; a row that has
stopped rides along until all have, its later tokens dropped. Each row sees exactly what a lone decode of its
prompt sees, so tokens, texts and copy events are those of one-prompt-at-a-time decoding (tested against the
unbatched loop). Masking decodes each setting's batch the same way. Finished prompts and settings go into
`interp.circuits.units.Units`, which ``interp heads retrieval`` checkpoints for ``--resume``.

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
from interp.backends.steps import plan_steps
from interp.limits import check_context, kv_bytes_per_token, memory_budget, rows_that_fit
from interp.circuits.units import Units
from interp.errors import InterpError
from interp.interventions import Intervention
from interp.metrics import check_finite
from interp.model import Model

SUCCESS_RECALL = 0.5  # a test counts for detection when ROUGE-1 recall > this
RETRIEVAL_THRESHOLD = 0.1  # retrieval head <=> mean score > this
PREFILL_CHUNK = 1024  # prefill in chunks so eager attention never holds a [S, S] matrix per layer
PREFILL_KEEP_BYTES = 2**30  # detection keeps its prefill caches for the masking pass when all of them fit in this


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


def stack_caches(caches: Sequence) -> object:
    """One KV cache holding the batch-1 caches ``caches`` (prompts of equal length) as rows, in order.

    Each prompt is prefilled on its own (exactly as when it is decoded alone), then the caches are joined
    along the batch axis, so a batch decode continues from the very same keys and values.
    """
    if not caches:
        raise InterpError("no KV caches to stack")
    out = copy.deepcopy(caches[0])
    if len(caches) == 1:
        return out
    if hasattr(out, "layers"):
        for i, layer in enumerate(out.layers):
            for name in ("keys", "values"):
                parts = [getattr(c.layers[i], name) for c in caches]
                if any(p is None for p in parts) or len({tuple(p.shape[1:]) for p in parts}) != 1:
                    raise InterpError("cannot batch these KV caches: their layers differ in shape (prompts of unequal length?)")
                setattr(layer, name, torch.cat(parts, 0))
        return out
    if hasattr(out, "key_cache") and hasattr(out, "value_cache"):
        for name in ("key_cache", "value_cache"):
            setattr(out, name, [torch.cat([getattr(c, name)[i] for c in caches], 0) for i in range(len(getattr(out, name)))])
        return out
    raise InterpError(f"cannot batch a KV cache of type {type(out).__name__}; decode one prompt at a time (batch_size=1)")


def _stops(model: Model, token: int) -> bool:
    return token == model.tokenizer.eos_token_id or "\n" in model.tokenizer.decode([token])


class TopKeys(dict):
    """Reads of ``attn_pattern.L`` kept only as the top-attended key of the last query, per row and head.

    Handed to the steps of one forward as the place reads go (`plan_steps`), it reduces each layer's
    pattern [rows, heads, q, keys] to [rows, heads] (on the CPU) the moment the forward reaches that layer,
    so the pattern is freed with the layer and a step never holds every layer's at once.
    """

    def __setitem__(self, site: str, pattern: torch.Tensor) -> None:
        super().__setitem__(site, pattern[:, :, -1].argmax(-1).cpu())


def decode_step(model: Model, tokens: torch.Tensor, interventions: Sequence[Intervention], read: Sequence[str],
                past, tops: dict) -> tuple[torch.Tensor, object]:
    """`Model.run_cached` of ``tokens`` whose reads go into ``tops`` (a `TopKeys`) as the forward makes them.

    Returns the last position's logits [rows, vocab] and the grown cache.
    """
    edits: dict = {}
    for iv in interventions:
        edits.setdefault(model.site(iv.site), []).append(iv)
    steps = plan_steps(model.adapter, edits, [model.site(s) for s in read], tops, False)
    logits, past = model.backend("torch").run_cached(tokens.to(model.device), steps, past)
    return logits[:, -1], past


def _decode(model: Model, prompts: Sequence[NeedlePrompt], max_new_tokens: int, masked: Sequence[tuple[int, int]],
            track: bool, past) -> list[Decoded]:
    """Greedy decode of equal-length ``prompts`` as one batch, continuing (and consuming) the cache ``past``.

    Every row runs the same steps a lone decode of its prompt runs; a row that has stopped (newline, end of
    text) keeps riding along until every row has stopped, but its later tokens and events are dropped.
    """
    n = len(prompts)
    read = [f"attn_pattern.{layer}" for layer in range(model.n_layers)] if track else []
    ids = [torch.tensor(p.ids) for p in prompts]
    events = [torch.zeros(model.n_layers, model.n_heads) for _ in prompts] if track else None
    generated: list[list[int]] = [[] for _ in prompts]
    active = [True] * n
    last = torch.tensor([[p.ids[-1]] for p in prompts], device=model.device)
    for step in range(max_new_tokens):
        tops = TopKeys()
        logits, past = decode_step(model, last, uniform_attention(masked, past), read, past, tops)
        logits = check_finite(logits, f"the logits of decode step {step}")
        tokens = logits.argmax(-1).tolist()
        if track:
            top = torch.stack([tops[s] for s in read], 1)  # [row, layer, head]
        for i in range(n):
            if not active[i]:
                continue
            token = int(tokens[i])
            generated[i].append(token)
            if track:
                start, end = prompts[i].needle_span
                in_needle = (top[i] >= start) & (top[i] < end)
                held = ids[i][top[i].clamp(start, end - 1)]
                events[i] += (in_needle & (held == token)).float()
            if _stops(model, token):
                active[i] = False
        if not any(active):
            break
        last = torch.tensor(tokens, device=model.device)[:, None]
    return [Decoded(g, model.tokenizer.decode(g, skip_special_tokens=True), events[i] if track else None)
            for i, g in enumerate(generated)]


def decode(model: Model, prompt: NeedlePrompt, max_new_tokens: int = 30, masked: Sequence[tuple[int, int]] = (),
           track: bool = True, past=None) -> Decoded:
    """Greedy decode after ``prompt`` with ``masked`` heads attending uniformly; count copy events if ``track``.

    ``past`` is a prefill cache from `prefill` (it is copied, never changed); None prefills here.
    """
    past = copy.deepcopy(past) if past is not None else prefill(model, prompt)
    return _decode(model, [prompt], max_new_tokens, masked, track, past)[0]


def decode_batch(model: Model, prompts: Sequence[NeedlePrompt], max_new_tokens: int = 30,
                 masked: Sequence[tuple[int, int]] = (), track: bool = True) -> list[Decoded]:
    """`decode` of several prompts of equal length in one batch: the same tokens, texts and events, faster."""
    if not prompts:
        raise InterpError("decode_batch needs at least one needle prompt")
    if len({len(p.ids) for p in prompts}) != 1:
        raise InterpError("decode_batch needs prompts of equal length (no padding); group them by length")
    return _decode(model, list(prompts), max_new_tokens, masked, track, stack_caches([prefill(model, p) for p in prompts]))


def prefill_bytes(model: Model, prompts: Sequence[NeedlePrompt]) -> int:
    """Bytes of the prefill caches of all ``prompts`` together."""
    return sum(len(p.ids) - 1 for p in prompts) * kv_bytes_per_token(model)


def decode_row_bytes(model: Model, length: int, max_new_tokens: int) -> int:
    """Bytes one prompt of ``length`` tokens costs in a decode batch: its prefill cache and the batch's copy
    of it (grown by the new tokens), one layer's attention row at a time, and float32 logits."""
    total = length + max_new_tokens
    return 2 * total * kv_bytes_per_token(model) + 3 * model.n_heads * total * 4 + 2 * model.d_vocab * 4


def prefill_peak_bytes(model: Model, length: int) -> int:
    """Bytes a prefill of ``length`` tokens adds while it runs: one chunk's eager attention scores in one layer."""
    return 3 * model.n_heads * min(PREFILL_CHUNK, length) * length * 4


def decode_rows(model: Model, length: int, max_new_tokens: int, max_memory: int | None = None) -> int:
    """How many prompts of ``length`` tokens one decode batch may hold within ``max_memory`` (bytes; None: a
    share of the device's free memory); a budget too small for one is a one-line error."""
    budget, fixed = memory_budget(model, max_memory), prefill_peak_bytes(model, length)
    per_row = decode_row_bytes(model, length, max_new_tokens)
    rows_that_fit(budget, fixed + per_row, f"decoding a context of {length + max_new_tokens} tokens")
    return (budget - fixed) // per_row


def length_batches(model: Model, prompts: Sequence[NeedlePrompt], max_new_tokens: int = 30,
                   batch_size: int | None = None, max_memory: int | None = None) -> list[list[int]]:
    """Indices of ``prompts`` in batches of equal length, in order of first appearance.

    ``batch_size`` None: as many rows as fit ``max_memory`` (`decode_rows`). The numbers do not depend on it.
    """
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p.ids), []).append(i)
    out = []
    for length, rows in groups.items():
        size = batch_size or decode_rows(model, length, max_new_tokens, max_memory)
        out += [rows[i:i + size] for i in range(0, len(rows), size)]
    return out


def detect_batch(model: Model, prompts: Sequence[NeedlePrompt], todo: list[int], max_new_tokens: int,
                 prefills: dict | None = None) -> list[Decoded]:
    """Detection's decode of the equal-length prompts ``todo`` (indices) as one batch; ``prefills`` gets their caches."""
    pasts = [prefill(model, prompts[i]) for i in todo]
    if prefills is not None:
        prefills.update(zip(todo, pasts))
    return _decode(model, [prompts[i] for i in todo], max_new_tokens, (), True, stack_caches(pasts))


def masking_job(model: Model, prompts: Sequence[NeedlePrompt], job: tuple, max_new_tokens: int, pasts: dict,
                prefills: dict | None = None) -> list[Decoded]:
    """Masking's decode of one job ``(batch number, setting, heads masked, prompt indices)``. ``pasts`` keeps one
    batch's prefill caches by prompt index across the jobs of that batch (taken from ``prefills`` where there)."""
    b, _, heads, todo = job
    if pasts.get("batch") != b:
        pasts.clear()
        pasts["batch"] = b
    for j in todo:
        if j not in pasts:
            pasts[j] = prefills.pop(j) if prefills and j in prefills else prefill(model, prompts[j])
    return _decode(model, [prompts[j] for j in todo], max_new_tokens, heads, False, stack_caches([pasts[j] for j in todo]))


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
                           success_recall: float = SUCCESS_RECALL, threshold: float = RETRIEVAL_THRESHOLD,
                           batch_size: int | None = None, progress=None, units: Units | None = None,
                           prefills: dict | None = None, max_memory: int | None = None, workers=None) -> RetrievalScores:
    """Retrieval score of every head from greedy decoding of ``prompts`` (see the module docstring).

    Prompts of equal length decode together (`length_batches`, as many as fit ``max_memory``; ``batch_size=1``:
    one at a time, the same numbers). ``progress(phase, done, total)`` is called after each batch; ``units`` keeps each decoded prompt
    (``detect.<i>``) so an interrupted run resumes without decoding it again. ``prefills`` (a dict) receives
    each prompt's prefill cache by index, for `masking_curve` to reuse instead of prefilling again. ``workers`` (a
    `interp.ray_workers.RayWorkers`) decodes the batches on Ray workers (`interp.circuits.ray_circuits`; no prefills kept).
    """
    if not prompts:
        raise InterpError("retrieval-head detection needs at least one needle prompt")
    units = Units() if units is None else units
    name = [f"detect.{i}" for i in range(len(prompts))]
    done = sum(n in units for n in name)
    if progress:
        progress("detect", done, len(prompts))
    batches = [[i for i in b if name[i] not in units] for b in length_batches(model, prompts, max_new_tokens, batch_size, max_memory)]

    def record(todo: list[int], outs: list[Decoded]) -> None:
        nonlocal done
        for i, out in zip(todo, outs):
            units.put(name[i], {"events": out.events, "recall": rouge1_recall(out.text, prompts[i].answer),
                                "response": out.text}, save=False)
        units.save()
        done += len(todo)
        if progress:
            progress("detect", done, len(prompts))

    if workers is not None:
        from interp.circuits.ray_circuits import ray_detect

        ray_detect(workers, prompts, [b for b in batches if b], max_new_tokens, record)
    for todo in (batches if workers is None else []):
        if todo:
            record(todo, detect_batch(model, prompts, todo, max_new_tokens, prefills))
    per_test, recall, responses = [], [], []
    for i, prompt in enumerate(prompts):
        got = units.get(name[i])
        per_test.append(got["events"].float() / (prompt.needle_span[1] - prompt.needle_span[0]))
        recall.append(float(got["recall"]))
        responses.append(str(got["response"]))
    per_test_t, recall_t = torch.stack(per_test), torch.tensor(recall)
    success = recall_t > success_recall
    head_score = per_test_t[success].mean(0) if success.any() else torch.zeros(model.n_layers, model.n_heads)
    check_finite(head_score, "the retrieval scores")
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
    notes: list[str] = field(default_factory=list)  # e.g. a k whose random heads came from a wider pool

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"retrieval/k": self.k, "retrieval/recall_top": self.recall_top, "retrieval/recall_random": self.recall_random}


def random_heads(scores: RetrievalScores, k: int, generator: torch.Generator,
                 exclude_retrieval: bool = True) -> list[tuple[int, int]]:
    """``k`` random heads, none of them in the top k or (``exclude_retrieval``) above the retrieval threshold."""
    excluded = set(scores.top(k)) | (set(scores.retrieval_heads()) if exclude_retrieval else set())
    n_layers, n_heads = scores.head_score.shape
    pool = [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in excluded]
    if k > len(pool):
        raise InterpError(f"cannot draw {k} random heads: only {len(pool)} heads are outside the top/retrieval heads")
    return [pool[int(i)] for i in torch.randperm(len(pool), generator=generator)[:k]]


def check_ks(model: Model, ks: Sequence[int], n_random: int = 1) -> None:
    """Refuse, before any decoding, numbers of heads to mask that the masking experiment cannot draw."""
    n = model.n_layers * model.n_heads
    bad = [k for k in ks if not 0 <= k <= n // 2]
    if bad:
        raise InterpError(f"--ks value {bad[0]} is out of range: {model.name} has {n} heads, and each k needs the top k "
                          f"plus k other random heads, so k must be in [0, {n // 2}]")
    if n_random < 1:
        raise InterpError(f"--n-random must be at least 1, got {n_random}")


def check_request(model: Model, context_lengths: Sequence[int], ks: Sequence[int], n_random: int = 1,
                  max_new_tokens: int = 30, depths: Sequence[float] = (0.0,), max_memory: int | None = None) -> None:
    """Refuse, before any decoding, a run the model or the machine cannot do: masking sizes it cannot draw
    (`check_ks`), contexts beyond the model's positions or too short for a needle, and a decode of the longest
    context (with the kept prefill caches) beyond the memory budget (``max_memory``; None: a share of the free
    memory)."""
    from interp.circuits.haystack import NEEDLES, niah_prompt

    check_ks(model, ks, n_random)
    if max_new_tokens < 1:
        raise InterpError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if not context_lengths:
        raise InterpError("give at least one context length")
    for length in context_lengths:
        check_context(model, int(length) + max_new_tokens, f"--lengths {length} plus --max-new-tokens {max_new_tokens}",
                      "use shorter --lengths or fewer --max-new-tokens")
    for needle in NEEDLES:  # the shortest context must hold each needle and its question
        niah_prompt(model.tokenizer, needle, int(min(context_lengths)), 0)
    longest = int(max(context_lengths))
    kept = len(NEEDLES) * len(depths) * sum(int(c) for c in context_lengths) * kv_bytes_per_token(model)
    need = (decode_row_bytes(model, longest, max_new_tokens) + prefill_peak_bytes(model, longest)
            + (kept if kept <= PREFILL_KEEP_BYTES else 0))
    rows_that_fit(memory_budget(model, max_memory), need, f"decoding a context of {longest + max_new_tokens} tokens")


def masking_settings(scores: RetrievalScores, ks: Sequence[int], n_random: int = 1, seed: int = 0
                     ) -> tuple[list[list[list[tuple[int, int]]]], list[str]]:
    """The random draws [k][draw] -> heads (seeded) and notes on any k whose random pool had to widen.

    Random heads exclude the top k and every retrieval head; when too few heads are left for a k (many
    retrieval heads), that k draws from every head outside the top k instead, and a note says so.
    """
    gen = torch.Generator().manual_seed(seed)
    draws, notes = [], []
    for k in ks:
        n_pool = scores.head_score.numel() - len(set(scores.top(k)) | set(scores.retrieval_heads()))
        wide = k > n_pool
        if wide:
            notes.append(f"k={k}: only {n_pool} heads lie outside the top {k} and the retrieval heads, so the random "
                         f"heads were drawn from every head outside the top {k}")
        draws.append([random_heads(scores, k, gen, exclude_retrieval=not wide) for _ in range(n_random)])
    return draws, notes


def masking_curve(model: Model, prompts: Sequence[NeedlePrompt], scores: RetrievalScores, ks: Sequence[int],
                  n_random: int = 1, max_new_tokens: int = 30, seed: int = 0, batch_size: int | None = None,
                  progress=None, units: Units | None = None, prefills: dict | None = None,
                  max_memory: int | None = None, workers=None) -> MaskingCurve:
    """Mean ROUGE-1 recall over ``prompts`` with the top-k vs k random heads attending uniformly while decoding.

    Each setting (no heads masked; per k the top k and each random draw) decodes the prompts of equal length
    as one batch. ``units`` keeps each (setting, prompt) recall (``mask.<setting>.<i>``) for a resumed run;
    ``progress(phase, done, total)`` is called after each batch. ``prefills`` holds prefill caches by prompt
    index from `detect_retrieval_heads` (used, never changed, and dropped once a batch is done). ``workers`` decodes
    each (setting, batch) on Ray workers (`interp.circuits.ray_circuits`).
    """
    if not prompts:
        raise InterpError("the masking experiment needs at least one needle prompt")
    if any(k < 0 for k in ks) or n_random < 1:
        raise InterpError(f"k must be >= 0 and n_random >= 1, got ks={list(ks)} n_random={n_random}")
    units = Units() if units is None else units
    draws, notes = masking_settings(scores, ks, n_random, seed)
    settings = {"clean": ()}  # name -> heads masked; k = 0 reuses the clean decode
    for i, k in enumerate(ks):
        if k:
            settings[f"top.{i}"] = tuple(scores.top(k))
            settings |= {f"random.{i}.{d}": tuple(heads) for d, heads in enumerate(draws[i])}
    name = {(s, j): f"mask.{s}.{j}" for s in settings for j in range(len(prompts))}
    total = len(name)
    done = sum(n in units for n in name.values())
    if progress:
        progress("mask", done, total)
    jobs = [(b, setting, heads, [j for j in batch if name[setting, j] not in units])
            for b, batch in enumerate(length_batches(model, prompts, max_new_tokens, batch_size, max_memory))
            for setting, heads in settings.items()]
    jobs = [job for job in jobs if job[3]]

    def record(setting: str, todo: list[int], outs: list[Decoded]) -> None:
        nonlocal done
        for j, out in zip(todo, outs):
            units.put(name[setting, j], {"recall": rouge1_recall(out.text, prompts[j].answer)}, save=False)
        units.save()
        done += len(todo)
        if progress:
            progress("mask", done, total)

    if workers is not None:
        from interp.circuits.ray_circuits import ray_masking

        ray_masking(workers, prompts, jobs, max_new_tokens, record)
    pasts: dict = {}
    for job in (jobs if workers is None else []):
        record(job[1], job[3], masking_job(model, prompts, job, max_new_tokens, pasts, prefills))

    def recall(setting: str, j: int) -> float:
        return float(units.get(name[setting, j])["recall"])

    n = len(prompts)  # the same float arithmetic as decoding one prompt and one setting at a time
    top, rand = torch.zeros(len(ks), n), torch.zeros(len(ks), n)
    for i, k in enumerate(ks):
        for j in range(n):
            top[i, j] = recall(f"top.{i}", j) if k else recall("clean", j)
            rand[i, j] = sum(recall(f"random.{i}.{d}", j) if k else recall("clean", j) for d in range(n_random)) / n_random
    clean = [recall("clean", j) for j in range(n)]
    return MaskingCurve(torch.tensor(list(ks)), top.mean(1), rand.mean(1), sum(clean) / len(clean), draws, notes)
