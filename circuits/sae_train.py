"""Training sparse dictionaries (SAEs and transcoders) on interp's hook layer, following the published recipes.

Activations are streamed from the model (``model.run(tokens, read=[site])``, no gradient through the model) in
*chunks*: a shuffle buffer of ``buffer`` model batches whose activations are shuffled with a seed per chunk and cut
into training batches. The dictionary trains on activations rescaled so their mean norm is sqrt(d_in) (SAELens's
``expected_average_only_in``); the scale is folded into the weights at the end, so the saved dictionary reads raw
activations. Three recipes:

- ``topk`` (Gao et al. 2024): the k largest pre-activations kept (ReLU'd), unit-norm decoder rows, and the
  auxiliary-k loss that reconstructs the residual error from the top ``k_aux`` dead latents (coefficient 1/32).
- ``jumprelu`` (Rajamanoharan et al. 2024): ``z = pre * H(pre - theta)`` with a learned positive threshold,
  trained through a straight-through estimator with a rectangle kernel of width ``bandwidth``, and an L0 penalty
  (``--l1`` is its coefficient); unit-norm decoder rows.
- ``relu`` (SAELens's standard recipe, Anthropic's April 2024 update): an L1 penalty on latents times their decoder
  norms, warmed up over the first 5% of steps, free decoder norms, gradient clipping at 1.

All use Adam with a linear warm-up and a linear decay over the last 20% of steps, ``W_enc`` initialised as the
decoder's transpose and ``b_dec`` as the geometric median (Weiszfeld) of the first chunk (an SAE) or the output
mean (a transcoder). The first position of every context (the attention sink, with an outlying norm) is skipped.

Every ``checkpoint_seconds`` a finished chunk is checkpointed (`interp.outdir.Checkpoint`: weights, Adam state,
dead-latent counters); chunk boundaries and every random draw are fixed by the seed, so a resumed run ends with
the same weights as an uninterrupted one (``torch.equal``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from interp.errors import InterpError
from interp.interventions import Intervention
from interp.outdir import Checkpoint

ARCHS = ("topk", "jumprelu", "relu")
DEFAULT_SPARSITY = {"relu": 5.0, "jumprelu": 1.0}  # L1 (relu) / L0 (jumprelu) coefficients on normalised activations


@dataclass
class TrainConfig:
    """What to train and how; ``l1`` is the L1 (relu) or L0 (jumprelu) coefficient, unused by topk."""

    site: str
    d_sae: int
    tokens: int
    arch: str = "topk"
    k: int | None = 32
    l1: float | None = None
    out_site: str | None = None
    lr: float = 4e-4
    batch_size: int = 1024
    context: int = 128
    model_batch: int = 8
    buffer: int = 16
    warmup: float = 0.05
    decay: float = 0.2
    bandwidth: float = 0.05
    init_threshold: float = 0.01
    aux_coeff: float = 1 / 32
    dead_tokens: int | None = None
    eval_contexts: int = 32
    corpus: str = "builtin"
    seed: int = 0

    def check(self) -> "TrainConfig":
        """This config with defaults filled in, or a one-line `InterpError` for a value that cannot train."""
        if self.arch not in ARCHS:
            raise InterpError(f"unknown --arch '{self.arch}': use one of {', '.join(ARCHS)}")
        if self.d_sae < 1 or self.tokens < 1:
            raise InterpError(f"--latents and --tokens must be at least 1, got {self.d_sae} and {self.tokens}")
        if self.arch == "topk":
            if self.k is None or not 0 < self.k <= self.d_sae:
                raise InterpError(f"--k must be in 1..{self.d_sae} (the number of latents), got {self.k}")
            if self.out_site is not None:
                raise InterpError("SAELens 6 has no TopK transcoder layout: train a transcoder with --arch relu or jumprelu")
        else:
            self.k = None
            self.l1 = DEFAULT_SPARSITY[self.arch] if self.l1 is None else self.l1
            if not (self.l1 >= 0 and self.l1 < float("inf")):
                raise InterpError(f"--l1 must be a finite number >= 0, got {self.l1}")
        if self.context < 2 or self.batch_size < 1 or self.model_batch < 1 or self.buffer < 1 or self.lr <= 0:
            raise InterpError("--context must be at least 2, the batch sizes and buffer at least 1, --lr positive")
        if self.buffer * self.model_batch * (self.context - 1) < self.batch_size:
            raise InterpError(f"the shuffle buffer ({self.buffer} x {self.model_batch} contexts) holds fewer tokens "
                              f"than one training batch of {self.batch_size}")
        if self.dead_tokens is None:
            self.dead_tokens = max(self.batch_size, min(10_000_000, self.tokens // 8))
        return self

    @property
    def steps(self) -> int:
        return -(-self.tokens // self.batch_size)

    @property
    def steps_per_chunk(self) -> int:
        return self.buffer * self.model_batch * (self.context - 1) // self.batch_size


# ---------------------------------------------------------------- the trainable dictionary
def _rect(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """``x * H(x - theta)``; the threshold's gradient through a rectangle kernel of width ``bandwidth`` (STE)."""

    @staticmethod
    def forward(ctx, x, theta, bandwidth):
        ctx.save_for_backward(x, theta)
        ctx.bandwidth = bandwidth
        return x * (x > theta).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, theta = ctx.saved_tensors
        bw = ctx.bandwidth
        grad_theta = (-(theta / bw) * _rect((x - theta) / bw) * grad).sum(0)
        return (x > theta).to(x.dtype) * grad, grad_theta, None


class _Step(torch.autograd.Function):
    """``H(x - theta)`` (what the L0 penalty counts); gradient to the threshold only, through the same kernel."""

    @staticmethod
    def forward(ctx, x, theta, bandwidth):
        ctx.save_for_backward(x, theta)
        ctx.bandwidth = bandwidth
        return (x > theta).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, theta = ctx.saved_tensors
        bw = ctx.bandwidth
        return torch.zeros_like(x), (-(1.0 / bw) * _rect((x - theta) / bw) * grad).sum(0), None


class TrainingDictionary(torch.nn.Module):
    """The parameters being trained, on normalised activations (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, d_in: int, d_out: int, generator: torch.Generator):
        super().__init__()
        self.cfg = cfg
        W_dec = torch.randn(cfg.d_sae, d_out, generator=generator)
        W_dec = W_dec / W_dec.norm(dim=1, keepdim=True) * (0.1 if cfg.arch == "relu" else 1.0)
        W_enc = W_dec.T.clone() if d_in == d_out else torch.randn(d_in, cfg.d_sae, generator=generator) / d_in ** 0.5
        P = torch.nn.Parameter
        self.W_enc, self.b_enc, self.W_dec, self.b_dec = P(W_enc), P(torch.zeros(cfg.d_sae)), P(W_dec), P(torch.zeros(d_out))
        if cfg.arch == "jumprelu":
            self.log_threshold = P(torch.full((cfg.d_sae,), float(torch.log(torch.tensor(cfg.init_threshold)))))
        self.apply_b_dec = cfg.out_site is None

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec if self.apply_b_dec else x) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents, pre-activations) of normalised activations x [n, d_in]."""
        pre = self.pre(x)
        if self.cfg.arch == "relu":
            return torch.relu(pre), pre
        if self.cfg.arch == "jumprelu":
            return _JumpReLU.apply(torch.relu(pre), self.log_threshold.exp(), self.cfg.bandwidth), pre
        values, indices = torch.topk(pre, self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, indices, values.relu()), pre

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec + self.b_dec

    def loss(self, x: torch.Tensor, y: torch.Tensor, dead: torch.Tensor, sparsity_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, latents) for inputs x and targets y (both normalised)."""
        z, pre = self.encode(x)
        recon = self.decode(z)
        loss = (recon - y).pow(2).sum(-1).mean()
        arch = self.cfg.arch
        if arch == "relu":
            loss = loss + sparsity_scale * self.cfg.l1 * (z * self.W_dec.norm(dim=1)).sum(-1).mean()
        elif arch == "jumprelu":
            loss = loss + self.cfg.l1 * _Step.apply(pre, self.log_threshold.exp(), self.cfg.bandwidth).sum(-1).mean()
        elif self.cfg.aux_coeff > 0 and bool(dead.any()):  # auxiliary-k: the dead latents reconstruct the error
            k_aux = min(max(1, y.shape[-1] // 2), int(dead.sum()))
            residual = (y - recon).detach()
            values, indices = torch.topk(pre.masked_fill(~dead, float("-inf")), k_aux, dim=-1, sorted=False)
            aux = torch.zeros_like(pre).scatter(-1, indices, values.relu()) @ self.W_dec
            scale = min(int(dead.sum()) / k_aux, 1.0)
            loss = loss + self.cfg.aux_coeff * scale * (aux - residual).pow(2).sum(-1).mean()
        return loss, z

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        if self.cfg.arch != "relu":
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove the part of W_dec's gradient that would change its rows' unit norm."""
        if self.cfg.arch != "relu" and self.W_dec.grad is not None:
            self.W_dec.grad -= (self.W_dec.grad * self.W_dec).sum(1, keepdim=True) * self.W_dec


def geometric_median(x: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """Weiszfeld's approximation of the point minimising the summed distance to the rows of x."""
    point = x.mean(0)
    for _ in range(iters):
        w = 1 / (x - point).norm(dim=1).clamp_min(1e-6)
        point = (w[:, None] * x).sum(0) / w.sum()
    return point


# ---------------------------------------------------------------- activations
class _Stopped(Exception):
    """Raised by `_StopAt` to end a forward early."""


@dataclass(frozen=True)
class _StopAt(Intervention):
    """Keep the activation at ``site`` in ``store``, then (``stop``) end the forward there."""

    store: dict
    stop: bool = True

    def apply(self, act: torch.Tensor) -> torch.Tensor:
        self.store[self.site] = act.detach()
        if self.stop:
            raise _Stopped
        return act


def site_acts(model, tokens: torch.Tensor, sites: list[str], backend: str | None = None) -> dict[str, torch.Tensor]:
    """The activations at ``sites`` (the last one last in the forward) on ``tokens``, without gradients.

    On the torch and lens backends the forward stops at the last site (a `_StopAt` intervention raises once it has
    the activation), so layers above it and the unembedding are not computed.
    """
    last = sites[-1]
    with torch.no_grad():
        if (backend or model.backend_name) not in ("torch", "lens"):
            return model.run(tokens, read=list(dict.fromkeys(sites)), backend=backend).acts
        acts: dict = {}
        try:
            model.run(tokens, [_StopAt(s, acts, stop=False) for s in sites[:-1] if s != last] + [_StopAt(last, acts)],
                      backend=backend)
        except _Stopped:
            pass
    if last not in acts:  # pragma: no cover - every block shape reaches its own sites
        raise InterpError(f"the forward did not reach {last}")
    return acts


def in_site_for(model, out_site: str) -> str:
    """The site an MLP reads, for a transcoder replacing ``mlp_out.L``: ``mlp_in.L`` (its norm's output in pre-norm
    blocks, as published transcoders read it)."""
    site = model.site(out_site)
    if site.kind != "mlp_out":
        raise InterpError(f"--transcoder-out must be an MLP output site (mlp_out.L), got '{out_site}'")
    return f"mlp_in.{site.layer}"


class ActivationSource:
    """Chunks of (input, target) activations from a `interp.circuits.corpus.TokenStream`, first positions skipped."""

    def __init__(self, model, stream, cfg: TrainConfig, in_site: str, out_site: str | None, backend: str | None = None):
        self.model, self.stream, self.cfg, self.backend = model, stream, cfg, backend
        self.in_site, self.out_site = in_site, out_site

    def acts(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of ``tokens``: activations [rows, pos, d] in float32.

        On the torch and lens backends the forward stops at the last site needed (a `_StopAt` intervention
        raises once it has the activation), so layers above it and the unembedding are not computed.
        """
        last = self.out_site or self.in_site
        acts = site_acts(self.model, tokens, [self.in_site, last], self.backend)
        x = acts[self.in_site].float()
        return x, acts[last].float()

    def chunk(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunk ``index`` shuffled: (x, y) [tokens, d]."""
        cfg = self.cfg
        per = cfg.buffer * cfg.model_batch
        tokens = self.stream.contexts(index * per, per)
        xs, ys = [], []
        for rows in tokens.split(cfg.model_batch):
            x, y = self.acts(rows)
            xs.append(x[:, 1:].reshape(-1, x.shape[-1]))
            ys.append(y[:, 1:].reshape(-1, y.shape[-1]))
        x, y = torch.cat(xs), torch.cat(ys)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + index))
        return x[order], y[order]


# ---------------------------------------------------------------- training
def _lr(cfg: TrainConfig, step: int) -> float:
    warm = max(1, round(cfg.warmup * cfg.steps))
    decay = max(1, round(cfg.decay * cfg.steps))
    factor = min(1.0, (step + 1) / warm, (cfg.steps - step) / decay)
    return cfg.lr * max(factor, 0.0)


def _state_tensors(sae: TrainingDictionary, opt: torch.optim.Optimizer, extra: dict) -> dict[str, torch.Tensor]:
    tensors = {f"sae/{k}": v for k, v in sae.state_dict().items()}
    for i, state in opt.state_dict()["state"].items():
        tensors |= {f"adam/{i}/{k}": v for k, v in state.items()}
    return tensors | {f"state/{k}": v for k, v in extra.items()}


def _restore(sae: TrainingDictionary, opt: torch.optim.Optimizer, tensors: dict) -> dict:
    sae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("sae/")})
    state: dict = {}
    for name, value in tensors.items():
        if name.startswith("adam/"):
            _, i, key = name.split("/")
            state.setdefault(int(i), {})[key] = value
    sd = opt.state_dict()
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
    return {k[6:]: v for k, v in tensors.items() if k.startswith("state/")}


@dataclass
class Trained:
    """The outcome of `train`: the folded dictionary's tensors, the training curve and throughput."""

    weights: dict[str, torch.Tensor]
    cfg: TrainConfig
    in_site: str
    dead: torch.Tensor          # [d_sae] bool: no activation in the last dead_tokens training tokens
    curve: torch.Tensor         # [n, 2] (step, loss) every few steps
    train_seconds: float
    tokens_trained: int
    resumed_from: int           # training steps found in the checkpoint


def train(model, cfg: TrainConfig, stream, out: Path | None = None, resume: bool = False, backend: str | None = None,
          progress=None, checkpoint_seconds: float = 60.0) -> Trained:
    """Train one dictionary on ``stream``'s contexts; checkpoint to ``out`` (``resume``: continue from it).

    ``progress(done_tokens, total_tokens)`` is called after every step (an exception it raises, such as
    KeyboardInterrupt, stops training, keeping the last checkpoint).
    """
    cfg.check()
    in_site = in_site_for(model, cfg.out_site) if cfg.out_site else str(model.site(cfg.site))
    source = ActivationSource(model, stream, cfg, in_site, cfg.out_site, backend)
    identity = {"command": "sae train", "model": model.name, **asdict(cfg), "in_site": in_site}
    checkpoint = Checkpoint(Path(out), identity) if out is not None else None
    loaded = checkpoint.load() if checkpoint is not None and resume else None
    if loaded is None:
        x0, y0 = source.chunk(0)
        d_in, d_out = x0.shape[-1], y0.shape[-1]
    else:
        (d_in, _), (_, d_out) = loaded[0]["sae/W_enc"].shape, loaded[0]["sae/W_dec"].shape
        x0 = y0 = None
    gen = torch.Generator().manual_seed(cfg.seed)
    sae = TrainingDictionary(cfg, d_in, d_out, gen)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    if loaded is not None:
        state = _restore(sae, opt, loaded[0])
        step, chunk, seconds = int(loaded[1]["step"]), int(loaded[1]["chunk"]), float(loaded[1]["seconds"])
        scale_in, scale_out = state["scale_in"], state["scale_out"]
        since_fired, curve = state["since_fired"], state["curve"].tolist()
    else:
        scale_in = (d_in ** 0.5) / x0.norm(dim=-1).mean()
        scale_out = (d_out ** 0.5) / y0.norm(dim=-1).mean() if cfg.out_site else scale_in
        with torch.no_grad():
            sae.b_dec.copy_(geometric_median(y0 * scale_out) if cfg.out_site is None else (y0 * scale_out).mean(0))
        step, chunk, seconds, curve = 0, 0, 0.0, []
        since_fired = torch.zeros(cfg.d_sae, dtype=torch.long)
    resumed_from = step
    t0, last_save = time.perf_counter(), time.perf_counter()
    while step < cfg.steps:
        x, y = (x0, y0) if x0 is not None else source.chunk(chunk)
        x0 = y0 = None  # free the first chunk once used
        for b in range(min(cfg.steps_per_chunk, cfg.steps - step)):
            xb = x[b * cfg.batch_size: (b + 1) * cfg.batch_size] * scale_in
            yb = y[b * cfg.batch_size: (b + 1) * cfg.batch_size] * scale_out
            for group in opt.param_groups:
                group["lr"] = _lr(cfg, step)
            warm = min(1.0, (step + 1) / max(1, round(cfg.warmup * cfg.steps)))
            loss, z = sae.loss(xb, yb, since_fired >= cfg.dead_tokens, warm)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sae.project_decoder_grad()
            if cfg.arch == "relu":
                torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
            opt.step()
            sae.normalize_decoder()
            with torch.no_grad():
                since_fired += len(xb)
                since_fired[(z > 0).any(0)] = 0
            if step % 10 == 0 or step == cfg.steps - 1:
                curve.append((step, float(loss.detach())))
            step += 1
            if progress is not None:
                progress(min(step * cfg.batch_size, cfg.tokens), cfg.tokens)
        chunk += 1
        if checkpoint is not None and step < cfg.steps and time.perf_counter() - last_save >= checkpoint_seconds:
            extra = {"scale_in": scale_in, "scale_out": scale_out, "since_fired": since_fired,
                     "curve": torch.tensor(curve, dtype=torch.float64).reshape(-1, 2)}
            checkpoint.save(_state_tensors(sae, opt, extra), step * cfg.batch_size, cfg.tokens, step=step, chunk=chunk,
                            seconds=seconds + time.perf_counter() - t0)
            last_save = time.perf_counter()
    seconds += time.perf_counter() - t0
    return Trained(_folded(sae, scale_in, scale_out), cfg, in_site, since_fired >= cfg.dead_tokens,
                   torch.tensor(curve, dtype=torch.float64).reshape(-1, 2), seconds,
                   cfg.steps * cfg.batch_size, resumed_from)


def _folded(sae: TrainingDictionary, scale_in: torch.Tensor, scale_out: torch.Tensor) -> dict[str, torch.Tensor]:
    """Weights that read raw activations: the input scale folded into W_enc, the output scale into W_dec and b_dec.

    For an SAE with b_dec subtracted from its input, (s x - b) W = s (x - b / s) W, so b_dec / s serves both ends.
    """
    with torch.no_grad():
        weights = {"W_enc": sae.W_enc * scale_in, "b_enc": sae.b_enc.clone(), "W_dec": sae.W_dec / scale_out,
                   "b_dec": sae.b_dec / scale_out}
        if sae.cfg.arch == "jumprelu":
            weights["threshold"] = sae.log_threshold.exp()
    return {k: v.detach().contiguous().float() for k, v in weights.items()}


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model, dictionary, tokens: torch.Tensor, target_site: str, backend: str | None = None,
             batch: int = 8) -> tuple[dict, torch.Tensor]:
    """Held-out metrics of a trained dictionary on ``tokens`` [n, context] (first positions skipped) and the
    fraction of evaluation tokens each latent fires on [d_sae].

    ``l0`` (active latents per token), ``explained_variance`` (1 - summed squared error / summed variance of the
    target), and the next-token loss clean, with the target site replaced by the reconstruction
    (`interp.interventions.Replace`, position 0 kept), and with it zeroed (``loss_recovered`` =
    (zero - spliced) / (zero - clean)).
    """
    from interp.interventions import Replace

    in_site = dictionary.site
    sums = torch.zeros(7, dtype=torch.float64)  # err2, y2, n_tok, l0, ce_clean, ce_spliced, ce_zero
    y_sum = fired = None
    n_pred = 0
    for rows in tokens.split(batch):
        out = model.run(rows, read=list(dict.fromkeys([in_site, target_site])), backend=backend)
        x, y = out.acts[in_site][:, 1:].float(), out.acts[target_site][:, 1:].float()
        z = dictionary.encode(x)
        recon = dictionary.decode(z, x)
        flat_y = y.reshape(-1, y.shape[-1]).double()
        y_sum = flat_y.sum(0) if y_sum is None else y_sum + flat_y.sum(0)
        counts = (z > 0).reshape(-1, z.shape[-1]).sum(0)
        fired = counts if fired is None else fired + counts
        sums[:4] += torch.tensor([float((recon - y).double().pow(2).sum()), float(flat_y.pow(2).sum()),
                                  flat_y.shape[0], float((z > 0).sum())], dtype=torch.float64)
        clean = out.acts[target_site]
        spliced, zeroed = clean.clone(), clean.clone()
        spliced[:, 1:] = recon.to(clean.dtype)
        zeroed[:, 1:] = 0
        losses = [out.logits]
        for value in (spliced, zeroed):
            losses.append(model.run(rows, [Replace(target_site, value)], backend=backend).logits)
        targets = rows[:, 2:].reshape(-1)
        for i, logits in enumerate(losses):
            pred = logits[:, 1:-1].float().reshape(-1, logits.shape[-1])
            sums[4 + i] += float(torch.nn.functional.cross_entropy(pred, targets.to(pred.device), reduction="sum"))
        n_pred += targets.numel()
    n = sums[2]
    variance = float(sums[1] - y_sum.pow(2).sum() / n)
    clean, spliced, zero = (float(v) / n_pred for v in sums[4:])
    metrics = {"l0": float(sums[3] / n), "explained_variance": 1 - float(sums[0]) / variance,
               "mse": float(sums[0] / n), "loss_clean": clean, "loss_spliced": spliced, "loss_increase": spliced - clean,
               "loss_zero_ablated": zero,
               "loss_recovered": (zero - spliced) / (zero - clean) if zero != clean else None,
               "eval_tokens": int(n)}
    return metrics, (fired.double() / n).float()
