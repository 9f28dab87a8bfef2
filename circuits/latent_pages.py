"""Latent pages: what each latent of a sparse dictionary responds to on a corpus, and what it writes to the logits.

`latent_pages` streams token contexts through the model, batch by batch without gradients, up to the dictionary's
input site (the layers above it and the unembedding are not run), encodes the latents there as the splice
``sae.<site>.latents`` (`interp.splicing`) does, and keeps per latent, in memory bounded by the dictionary's width:

- ``density``: the fraction of tokens it fires on (latent > 0), ``max`` and ``mean`` (mean when firing);
- ``hist``: counts of its nonzero activations in fixed log-spaced bins shared by every latent
  (`HIST_DECADES` decades from ``10**HIST_LOW``, `BINS_PER_DECADE` bins a decade, the ends open);
- its top ``top`` contexts by the context's maximum activation (each context once): the context's index in the
  corpus stream, the position of the maximum, the activation, and the window of ``±window`` tokens around it with
  the token ids and the latent's activation at each (a running top-N merged batch by batch with ``torch.topk``);
- ``promoted`` / ``suppressed``: the ``k`` vocabulary tokens its decoder row raises and lowers most through the
  direct path to the logits, ``W_dec[j] @ (final-norm gain * W_U)`` (see `residual_directions`).

The first ``skip`` positions of every context (default 1: the first token, where attention sinks make activations
atypical; `interp sae train` skips it too) count for nothing.

>>> tensors = latent_pages(model, dictionary, tokens, top=10)   # doctest: +SKIP
>>> tensors["latents/density"].shape                            # doctest: +SKIP
torch.Size([4608])
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from interp.errors import InterpError

HIST_LOW, HIST_DECADES, BINS_PER_DECADE = -4, 8, 20  # bins from 1e-4 to 1e4
PAD = -1  # token id / context index where a window runs past its context, or a latent has fewer top contexts


def hist_edges() -> torch.Tensor:
    """The histogram's bin edges [HIST_DECADES * BINS_PER_DECADE + 1] (activations below / above the ends count in
    the first / last bin)."""
    return torch.logspace(HIST_LOW, HIST_LOW + HIST_DECADES, HIST_DECADES * BINS_PER_DECADE + 1, dtype=torch.float64)


def residual_directions(model, dictionary) -> tuple[torch.Tensor | None, str | None]:
    """What each latent writes into the residual stream per unit activation [d_sae, d_model], or (None, why not).

    An SAE writes its decoder row at its site, a transcoder at its output site: residual sites, ``attn_out`` and
    ``mlp_out`` as they are, ``head_out`` rows (flattened heads) through ``W_O``, ``mlp_act`` rows through the MLP's
    ``W_out``. A family whose sublayer outputs are normalised before they join the residual, and sites nothing
    writes (``mlp_in``), give no direction.
    """
    site = model.site(getattr(dictionary, "out_site", None) or dictionary.site)
    rows = dictionary.W_dec.detach().float().cpu()
    if site.kind in ("resid_pre", "resid_mid", "resid_post"):
        return rows, None
    if site.kind not in ("attn_out", "mlp_out", "head_out", "mlp_act"):
        return None, f"a dictionary writing {site} does not write the residual stream: no logit effects"
    if not model.adapter.sublayers_add_linearly():
        return None, (f"{model.adapter.family} normalises {site.kind} before it joins the residual stream: "
                      "no logit effects")
    if site.kind == "head_out":
        w_o = model.W_O(site.layer).detach().float().cpu()  # [heads, d_head, d_model]
        return torch.einsum("shd,hdm->sm", rows.reshape(rows.shape[0], *w_o.shape[:2]), w_o), None
    if site.kind == "mlp_act":
        return rows @ model.W_out(site.layer).detach().float().cpu(), None
    return rows, None


def logit_effects(model, directions: torch.Tensor, k: int = 10, chunk: int = 256) -> dict[str, torch.Tensor]:
    """The ``k`` most promoted and most suppressed tokens of each direction [n, d_model] through the direct path
    ``direction @ (gain * W_U)`` (a LayerNorm model's directions centred first): ids and logit effects [n, k]."""
    unembed = (model.final_gain().detach().float().cpu()[:, None] * model.W_U.detach().float().cpu())  # [d_model, vocab]
    if model.adapter.norm.kind == "layer":
        directions = directions - directions.mean(-1, keepdim=True)
    k = min(k, unembed.shape[1])
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in ("promoted", "promoted_ids", "suppressed", "suppressed_ids")}
    for rows in directions.split(chunk):
        effects = rows @ unembed
        up, down = effects.topk(k, dim=-1), effects.topk(k, dim=-1, largest=False)
        parts["promoted"].append(up.values)
        parts["promoted_ids"].append(up.indices)
        parts["suppressed"].append(down.values)
        parts["suppressed_ids"].append(down.indices)
    return {f"latents/{name}": torch.cat(values) for name, values in parts.items()}


class _Running:
    """The statistics of every latent over the batches seen so far (see the module docstring)."""

    def __init__(self, d_sae: int, top: int, window: int):
        self.top, self.window = top, window
        self.fired = torch.zeros(d_sae, dtype=torch.long)
        self.total = torch.zeros(d_sae, dtype=torch.float64)
        self.max = torch.zeros(d_sae)
        self.hist = torch.zeros(d_sae * HIST_DECADES * BINS_PER_DECADE, dtype=torch.long)
        self.tokens = 0
        width = 2 * window + 1
        self.best = torch.full((top, d_sae), -1.0)  # a context's max activation; -1: no context yet
        self.context = torch.full((top, d_sae), PAD, dtype=torch.long)
        self.position = torch.zeros((top, d_sae), dtype=torch.long)
        self.window_ids = torch.full((top, d_sae, width), PAD, dtype=torch.long)
        self.window_acts = torch.zeros((top, d_sae, width))

    def add(self, z: torch.Tensor, tokens: torch.Tensor, first_context: int, skip: int) -> None:
        """Count the latents z [batch, pos, d_sae] of contexts ``tokens`` [batch, pos], numbered from ``first_context``."""
        z = z.float().cpu()
        counted = z[:, skip:].reshape(-1, z.shape[-1])
        on = counted > 0
        self.tokens += counted.shape[0]
        self.fired += on.sum(0)
        self.total += torch.where(on, counted, 0).sum(0, dtype=torch.float64)
        self.max = torch.maximum(self.max, counted.max(0).values.clamp_min(0))
        rows, cols = on.nonzero(as_tuple=True)
        bins = HIST_DECADES * BINS_PER_DECADE
        index = ((counted[rows, cols].double().log10() - HIST_LOW) * BINS_PER_DECADE).floor().clamp(0, bins - 1).long()
        self.hist += torch.bincount(cols * bins + index, minlength=self.hist.numel())
        self._merge_top(z, tokens, first_context, skip)

    def _merge_top(self, z: torch.Tensor, tokens: torch.Tensor, first_context: int, skip: int) -> None:
        batch, n_pos, d_sae = z.shape
        peak, where = z[:, skip:].max(1)  # [batch, d_sae]: each context's max and its position
        where = where + skip
        n = min(self.top, batch)
        value, row = peak.topk(n, dim=0)  # [n, d_sae]
        position = where.gather(0, row)
        w = self.window
        offsets = torch.arange(-w, w + 1)
        pos = position[..., None] + offsets  # [n, d_sae, width]
        inside = (pos >= 0) & (pos < n_pos)
        pos_c = pos.clamp(0, n_pos - 1)
        latent = torch.arange(d_sae)[None, :, None].expand_as(pos_c)
        acts = torch.where(inside, z[row[..., None].expand_as(pos_c), pos_c, latent], 0.0)
        ids = torch.where(inside, tokens.cpu()[row[..., None].expand_as(pos_c), pos_c], PAD)
        cat = lambda old, new: torch.cat([old, new])
        value_all = cat(self.best, value)
        keep = value_all.topk(self.top, dim=0).indices  # [top, d_sae]
        self.best = value_all.gather(0, keep)
        self.context = cat(self.context, row + first_context).gather(0, keep)
        self.position = cat(self.position, position).gather(0, keep)
        keep3 = keep[..., None].expand(-1, -1, 2 * w + 1)
        self.window_ids = cat(self.window_ids, ids).gather(0, keep3)
        self.window_acts = cat(self.window_acts, acts).gather(0, keep3)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The run's tensors, latent first (top contexts [d_sae, top], windows [d_sae, top, width])."""
        if self.tokens == 0:
            raise InterpError("no token was counted: the contexts are not longer than the skipped first positions")
        found = self.best > 0  # a context where the latent never fired is no top context
        bins = HIST_DECADES * BINS_PER_DECADE
        return {
            "latents/density": (self.fired.double() / self.tokens).float(),
            "latents/max": self.max,
            "latents/mean": torch.where(self.fired > 0, self.total / self.fired.clamp_min(1), 0).float(),
            "latents/hist": self.hist.view(-1, bins),
            "latents/hist_edges": hist_edges().float(),
            "latents/top_activation": torch.where(found, self.best, 0).T.contiguous(),
            "latents/top_context": torch.where(found, self.context, PAD).T.contiguous().int(),
            "latents/top_position": torch.where(found, self.position, PAD).T.contiguous().int(),
            "latents/window_ids": torch.where(found[..., None], self.window_ids, PAD).transpose(0, 1).contiguous().int(),
            "latents/window_acts": torch.where(found[..., None], self.window_acts, 0).transpose(0, 1).contiguous(),
        }


def read_latents(model, dictionary, tokens: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """The dictionary's latents [batch, pos, d_sae] on ``tokens``: its input site read (the forward ends there on the
    torch and lens backends) and encoded, as the splice ``sae.<site>.latents`` encodes it (head_out flattened)."""
    from interp.circuits.sae_train import site_acts

    site = str(model.site(dictionary.site))
    x = site_acts(model, tokens, [site], backend)[site]
    with torch.no_grad():
        return dictionary.encode(x.flatten(-2) if site.startswith("head_out.") else x)


def latent_pages(model, dictionary, tokens: torch.Tensor, top: int = 20, window: int = 12, k: int = 10,
                 batch: int = 8, skip: int = 1, backend: str | None = None,
                 progress: Callable[[int, int], None] | None = None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Every latent's statistics, top contexts and logit effects over ``tokens`` [n_contexts, context].

    Returns the tensors (names ``latents/...``, see the module docstring) and notes on what was left out.
    ``progress(done, total)`` is called with contexts done after every batch of ``batch`` contexts.
    """
    if tokens.ndim != 2 or tokens.shape[0] == 0:
        raise InterpError(f"latent pages need token contexts [n, context], got shape {tuple(tokens.shape)}")
    for name, value, low in (("--top", top, 1), ("--window", window, 0), ("k", k, 1), ("batch", batch, 1)):
        if value < low:
            raise InterpError(f"{name} must be at least {low}, got {value}")
    if tokens.shape[1] <= skip:
        raise InterpError(f"contexts of {tokens.shape[1]} tokens leave nothing once the first {skip} are skipped")
    running = _Running(dictionary.d_sae, top, window)
    n = tokens.shape[0]
    for start in range(0, n, batch):
        rows = tokens[start: start + batch]
        running.add(read_latents(model, dictionary, rows, backend), rows, start, skip)
        if progress is not None:
            progress(min(start + batch, n), n)
    tensors = running.tensors()
    notes = []
    directions, why_not = residual_directions(model, dictionary)
    if directions is None:
        notes.append(why_not)
    else:
        with torch.no_grad():
            tensors |= logit_effects(model, directions, k)
    return tensors, notes


_AXES = {"density": ["latent"], "max": ["latent"], "mean": ["latent"], "log10_density": ["latent"],
         "hist": ["latent", "bin"], "hist_edges": ["edge"], "top_activation": ["latent", "rank"],
         "top_context": ["latent", "rank"], "top_position": ["latent", "rank"], "window_ids": ["latent", "rank", "offset"],
         "window_acts": ["latent", "rank", "offset"], "promoted": ["latent", "k"], "promoted_ids": ["latent", "k"],
         "suppressed": ["latent", "k"], "suppressed_ids": ["latent", "k"]}


def token_strings(tokenizer, tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """Every token id the pages show (windows, promoted and suppressed tokens) -> its text, so the app needs no
    tokenizer."""
    ids = torch.cat([tensors[n].reshape(-1).long() for n in ("latents/window_ids", "latents/promoted_ids",
                                                               "latents/suppressed_ids") if n in tensors])
    return {str(i): tokenizer.decode([i]) for i in sorted(set(ids[ids >= 0].tolist()))}


def latents_run(model, dictionary, corpus: str = "builtin", tokens: int = 20_000, context: int = 64, top: int = 20,
                window: int = 12, k: int = 10, batch: int = 8, seed: int = 0, backend: str | None = None,
                progress: Callable[[int, int], None] | None = None, command: str = "sae latents",
                source: str | None = None):
    """`latent_pages` over about ``tokens`` tokens of ``corpus`` (at most one pass over it) as a
    `interp.results.RunResult` (not yet saved: `interp.cli_support.finish` saves it)."""
    import time

    from interp.circuits.corpus import TokenStream, load_corpus
    from interp.results import RunResult, describe_tensor, run_header

    stream = TokenStream(list(load_corpus(corpus)["text"]), model.tokenizer, context, seed)
    wanted = -(-tokens // context)
    n = min(wanted, stream.per_epoch)
    notes = []
    if n < wanted:
        notes.append(f"the corpus holds {stream.per_epoch} contexts of {context} tokens, fewer than the {wanted} asked "
                     f"for: each was used once ({n * context} tokens)")
    contexts = stream.contexts(0, n)
    t0 = time.perf_counter()
    tensors, why_not = latent_pages(model, dictionary, contexts, top, window, k, batch, backend=backend,
                                    progress=progress)
    seconds = time.perf_counter() - t0
    notes += why_not
    tensors["latents/log10_density"] = tensors["latents/density"].clamp_min(1e-7).log10()
    density = tensors["latents/density"]
    site = f"{dictionary.site} -> {dictionary.out_site}" if getattr(dictionary, "out_site", None) else dictionary.site
    summary = (f"{dictionary.d_sae} latents of the {getattr(dictionary, 'arch', '')} dictionary at {site} over "
               f"{n} contexts of {context} tokens: {float((density > 0).float().mean()):.1%} fired, mean density "
               f"{float(density.mean()):.4f}, densest {float(density.max()):.4f}; {n * context / seconds:.0f} tokens/s")
    described = {name: describe_tensor(name, value, _AXES[name.split("/", 1)[1]]) for name, value in tensors.items()}
    for info in described.values():
        info["plot"] = False
    manifest = {**run_header(model, command, seed, backend), "method": "latent pages",
                "parameters": {"corpus": corpus, "tokens": tokens, "tokens_used": n * context, "contexts": n,
                               "context": context, "top": top, "window": window, "k": k, "skip_first": 1,
                               "batch": batch},
                "dictionary": {"source": source, "site": dictionary.site,
                               "out_site": getattr(dictionary, "out_site", None),
                               "arch": getattr(dictionary, "arch", None), "d_sae": dictionary.d_sae},
                "token_strings": token_strings(model.tokenizer, tensors),
                "timings": {"latents_s": round(seconds, 3)}, "tensors": described,
                "notes": [{"title": "Latents", "text": summary}] + [{"title": "Note", "text": t} for t in notes],
                "histograms": [{"title": "Latent density", "x_title": "log10 fraction of tokens",
                                "tensors": ["latents/log10_density"]}]}
    return RunResult(manifest, tensors)
