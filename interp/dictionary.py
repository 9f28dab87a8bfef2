"""Sparse dictionaries (SAEs and transcoders) in SAELens's published on-disk layout.

A `Dictionary` encodes an activation of one site into sparse latents and decodes them back: an SAE
reconstructs its own site, a transcoder reads one site (an MLP's input) and predicts another (that
MLP's output, ``out_site``). ``load_dictionary`` reads the folder SAELens 6 writes (``cfg.json`` +
``sae_weights.safetensors``) and Gemma Scope 2's (``config.json`` + ``params.safetensors``), from
disk only; ``save_dictionary`` writes SAELens 6's layout, which ``SAE.load_from_disk`` reads.
``encode``/``decode`` compute what SAELens's ``encode``/``forward`` compute, to float rounding
(tests/fixtures/saelens holds dictionaries SAELens wrote, with its latents and outputs).

SAELens names hooks as TransformerLens does; they map to interp sites (`interp.sites`)::

    blocks.L.hook_resid_pre / hook_resid_mid / hook_resid_post   resid_pre.L / resid_mid.L / resid_post.L
    blocks.L.hook_mlp_in (TransformerLens: resid_mid, before ln2)  resid_mid.L
    blocks.L.hook_attn_out / hook_mlp_out / mlp.hook_post         attn_out.L / mlp_out.L / mlp_act.L
    blocks.L.attn.hook_z (d_in = n_heads * d_head)                head_out.L (flattened)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from interp.errors import InterpError
from interp.results import read_tensors, write_json_atomic, write_tensors_atomic

ARCHS = ("relu", "topk", "jumprelu")
NORMALIZATIONS = ("none", "constant_norm_rescale", "layer_norm")  # what SAELens 6's SAE classes apply at inference
# SAELens architecture -> (arch, transcoder, skip connection)
_SAELENS_ARCHS = {
    "standard": ("relu", False, False), "topk": ("topk", False, False), "jumprelu": ("jumprelu", False, False),
    "transcoder": ("relu", True, False), "skip_transcoder": ("relu", True, True),
    "jumprelu_transcoder": ("jumprelu", True, False), "jumprelu_skip_transcoder": ("jumprelu", True, True),
}
_HOOKS = {  # TransformerLens hook (after "blocks.L.") -> interp site kind
    "hook_resid_pre": "resid_pre", "hook_resid_mid": "resid_mid", "hook_resid_post": "resid_post",
    "hook_mlp_in": "resid_mid", "hook_attn_out": "attn_out", "hook_mlp_out": "mlp_out",
    "mlp.hook_post": "mlp_act", "attn.hook_z": "head_out",
}
_SITE_HOOKS = {"resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
               "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out", "mlp_act": "mlp.hook_post",
               "head_out": "attn.hook_z"}
_GEMMA_SCOPE_2 = {  # HF module point (after "model.layers.L.") -> interp site kind
    "output": "resid_post", "self_attn.o_proj.input": "head_out", "post_feedforward_layernorm.output": "mlp_out",
}
_LN_EPS = 1e-5  # SAELens's layer_norm normalisation


class Dictionary(torch.nn.Module):
    """A sparse dictionary: ``latents = encode(x)``, ``recon = decode(latents, x)``.

    ``W_enc`` [d_in, d_sae], ``b_enc`` [d_sae], ``W_dec`` [d_sae, d_out], ``b_dec`` [d_out], ``threshold``
    [d_sae] (jumprelu), ``W_skip`` [d_out, d_in] (skip transcoders, SAELens's orientation) are parameters;
    `load_dictionary` returns them with ``requires_grad=False``.
    """

    def __init__(self, arch: str, W_enc: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor,
                 *, site: str, out_site: str | None = None, threshold: torch.Tensor | None = None, k: int | None = None,
                 W_skip: torch.Tensor | None = None, apply_b_dec_to_input: bool = False,
                 normalize_activations: str = "none", rescale_acts_by_decoder_norm: bool = False,
                 model_name: str | None = None, cfg: dict | None = None):
        super().__init__()
        if arch not in ARCHS:
            raise InterpError(f"unknown dictionary architecture '{arch}': use one of {', '.join(ARCHS)}")
        if normalize_activations not in NORMALIZATIONS:
            raise InterpError(f"input normalisation '{normalize_activations}' is not applied at inference by SAELens 6 "
                              f"(fold it into the weights first); interp applies {', '.join(NORMALIZATIONS)}")
        d_in, d_sae = W_enc.shape
        d_out = W_dec.shape[1]
        shapes = {"b_enc": (b_enc, (d_sae,)), "W_dec": (W_dec, (d_sae, d_out)), "b_dec": (b_dec, (d_out,)),
                  "threshold": (threshold, (d_sae,)), "W_skip": (W_skip, (d_out, d_in))}
        for name, (t, shape) in shapes.items():
            if t is not None and tuple(t.shape) != shape:
                raise InterpError(f"dictionary tensor {name} has shape {tuple(t.shape)}, expected {shape} "
                                  f"(W_enc is [{d_in}, {d_sae}])")
        if (arch == "jumprelu") != (threshold is not None):
            raise InterpError("a jumprelu dictionary needs a threshold, and only a jumprelu one has one")
        if arch == "topk" and not (isinstance(k, int) and 0 < k <= d_sae):
            raise InterpError(f"a topk dictionary needs k in 1..{d_sae}, got {k}")
        if out_site is None and (d_out != d_in or W_skip is not None):
            raise InterpError(f"an SAE reconstructs its input (d_out {d_out} != d_in {d_in}, or a skip connection): "
                              f"give out_site for a transcoder")
        if out_site is not None and apply_b_dec_to_input:
            raise InterpError("a transcoder cannot subtract b_dec from its input (apply_b_dec_to_input)")
        self.arch, self.site, self.out_site, self.model_name = arch, site, out_site, model_name
        self.k = k if arch == "topk" else None
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)
        self.normalize_activations = normalize_activations
        self.rescale_acts_by_decoder_norm = bool(rescale_acts_by_decoder_norm)
        self.cfg = dict(cfg or {})
        P = torch.nn.Parameter
        self.W_enc, self.b_enc, self.W_dec, self.b_dec = P(W_enc), P(b_enc), P(W_dec), P(b_dec)
        self.threshold = None if threshold is None else P(threshold)
        self.W_skip = None if W_skip is None else P(W_skip)

    d_in = property(lambda self: self.W_enc.shape[0])
    d_sae = property(lambda self: self.W_enc.shape[1])
    d_out = property(lambda self: self.W_dec.shape[1])
    is_transcoder = property(lambda self: self.out_site is not None)

    def __repr__(self) -> str:
        where = f"{self.site} -> {self.out_site}" if self.is_transcoder else self.site
        return f"Dictionary({self.arch}, {where}, d_in={self.d_in}, d_sae={self.d_sae}, d_out={self.d_out})"

    # ---------------------------------------------------------------- compute
    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        """x as [..., d_in] (a head_out site's [..., n_heads, d_head] is flattened, as SAELens's hook_z SAEs do)."""
        if x.shape[-1] != self.d_in and x.ndim >= 2 and x.shape[-2] * x.shape[-1] == self.d_in:
            x = x.flatten(-2)
        if x.shape[-1] != self.d_in:
            raise InterpError(f"this dictionary reads {self.d_in}-wide activations of {self.site}; "
                              f"got shape {tuple(x.shape)}")
        return x.to(self.W_enc.dtype)

    def _norm_stats(self, x: torch.Tensor):
        if self.normalize_activations == "constant_norm_rescale":
            return (self.d_in ** 0.5) / x.norm(dim=-1, keepdim=True)
        if self.normalize_activations == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            return mu, (x - mu).std(dim=-1, keepdim=True)
        return None

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize_activations == "constant_norm_rescale":
            return x * self._norm_stats(x)
        if self.normalize_activations == "layer_norm":
            mu, std = self._norm_stats(x)
            return (x - mu) / (std + _LN_EPS)
        return x

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's pre-activations [..., d_sae] (before ReLU, threshold or top-k)."""
        x = self._normalize(self._flat(x))
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents [..., d_sae] of activations x [..., d_in]."""
        pre = self.pre_acts(x)
        if self.arch == "relu":
            return torch.relu(pre)
        if self.arch == "jumprelu":
            return torch.relu(pre) * (pre > self.threshold).to(pre.dtype)
        if self.rescale_acts_by_decoder_norm:
            pre = pre * self.W_dec.norm(dim=-1)
        values, indices = torch.topk(pre, k=self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, indices, values.relu())

    def decode(self, latents: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """The reconstruction [..., d_out] of ``latents``, back on the input's scale as SAELens's forward gives it.

        ``x`` (the encoded activations) is needed only where the output depends on it: per-input
        normalisation (``constant_norm_rescale``, ``layer_norm``) of an SAE, and a transcoder's skip connection.
        A head_out SAE's reconstruction stays flat [..., n_heads * d_head]; `forward` gives x's shape.
        """
        acts = latents.to(self.W_dec.dtype)
        if self.rescale_acts_by_decoder_norm:
            acts = acts * (1 / self.W_dec.norm(dim=-1))
        out = acts @ self.W_dec + self.b_dec
        needs_x = (self.normalize_activations != "none" and not self.is_transcoder) or self.W_skip is not None
        if needs_x and x is None:
            raise InterpError(f"decoding this dictionary needs its input x (normalisation "
                              f"'{self.normalize_activations}'{' and a skip connection' if self.W_skip is not None else ''})")
        if not self.is_transcoder and self.normalize_activations == "constant_norm_rescale":
            out = out / self._norm_stats(self._flat(x))
        elif not self.is_transcoder and self.normalize_activations == "layer_norm":
            mu, std = self._norm_stats(self._flat(x))
            out = out * std + mu
        if self.W_skip is not None:
            out = out + self._flat(x) @ self.W_skip.T
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x), x)``, an SAE's in x's own shape (head_out: [..., n_heads, d_head])."""
        out = self.decode(self.encode(x), x)
        return out if self.is_transcoder else out.reshape(x.shape)


# ---------------------------------------------------------------- sites
def hook_to_site(hook: str) -> str:
    """The interp site of a TransformerLens hook name SAELens uses, e.g. ``blocks.6.hook_resid_post`` -> ``resid_post.6``."""
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", hook or "")
    if m and m.group(2) == "ln2.hook_normalized":  # what the MLP reads
        return f"mlp_in.{m.group(1)}"
    if not m or m.group(2) not in _HOOKS:
        raise InterpError(f"the dictionary reads hook '{hook}', which has no interp site (interp reads "
                          f"blocks.L.{{{', '.join(sorted(_HOOKS))}}})")
    return f"{_HOOKS[m.group(2)]}.{m.group(1)}"


def site_to_hook(site: str) -> str:
    """The TransformerLens hook name SAELens uses for an interp site (the inverse of `hook_to_site`)."""
    kind, _, layer = site.partition(".")
    if kind == "mlp_in":
        return f"blocks.{layer}.ln2.hook_normalized"
    if kind not in _SITE_HOOKS or not layer.isdigit():
        raise InterpError(f"site '{site}' has no TransformerLens hook a SAELens dictionary could name")
    return f"blocks.{layer}.{_SITE_HOOKS[kind]}"


def _same_model(a: str, b: str) -> bool:
    def norm(name: str) -> str:  # "google/gemma-3-270m", Gemma Scope 2's "gemma-v3-270m-pt" -> "gemma-3-270m"
        name = str(name).rstrip("/").split("/")[-1].lower().replace("-v3", "-3")
        return name.removesuffix("-pt")
    return norm(a) == norm(b)


def check_dictionary(d: Dictionary, model) -> None:
    """Refuse (one line) a dictionary made for another model, a site this model lacks, or other widths."""
    if d.model_name and not _same_model(d.model_name, model.name):
        raise InterpError(f"the dictionary was trained on '{d.model_name}', not the loaded model '{model.name}'")
    for site, width, what in ((d.site, d.d_in, "d_in"), (d.out_site, d.d_out, "d_out")):
        if site is None:
            continue
        expected = model.site_width(site)  # also a one-line error for a layer or site kind this model lacks
        if expected is None:
            raise InterpError(f"a dictionary cannot read or replace {site} (read-only or per-head q/k/v site): use a "
                              "residual, attn_out, mlp_out, mlp_in, mlp_act or head_out site")
        if width != expected:
            raise InterpError(f"the dictionary's {what} is {width} but {site} of '{model.name}' is "
                              f"{expected} wide")


# ---------------------------------------------------------------- load / save
def load_dictionary(folder: str | Path, model=None) -> Dictionary:
    """Load a dictionary from a local folder in SAELens's layout (or Gemma Scope 2's); nothing is downloaded.

    With ``model`` (an `interp.Model`), its name, site and widths are checked against the model.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InterpError(f"no dictionary folder at {folder}: expected cfg.json and sae_weights.safetensors "
                          "(SAELens) or config.json and params.safetensors (Gemma Scope 2); nothing is downloaded")
    if (folder / "cfg.json").is_file() and (folder / "sae_weights.safetensors").is_file():
        d = _from_saelens(_read_json(folder / "cfg.json"), read_tensors(folder / "sae_weights.safetensors"))
    elif (folder / "params.safetensors").is_file():
        d = _from_gemma_scope_2(folder, read_tensors(folder / "params.safetensors"))
    elif (folder / "params.npz").is_file():
        raise InterpError(f"{folder} holds params.npz (Gemma Scope 1, for Gemma 2 models), which interp does not "
                          "read; convert it to SAELens's layout with SAELens")
    else:
        raise InterpError(f"{folder} is not a dictionary folder: expected cfg.json and sae_weights.safetensors "
                          "(SAELens) or config.json and params.safetensors (Gemma Scope 2)")
    d.requires_grad_(False)
    if model is not None:
        check_dictionary(d, model)
    return d


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InterpError(f"{path} cannot be read as JSON ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from e


_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _from_saelens(cfg: dict, tensors: dict[str, torch.Tensor]) -> Dictionary:
    meta = cfg.get("metadata") or {}
    get = lambda key: meta.get(key, cfg.get(key))
    arch_name = cfg.get("architecture", "standard")
    if (cfg.get("activation_fn") or cfg.get("activation_fn_str")) == "topk":  # pre-6 TopK configs
        arch_name, cfg = "topk", {**cfg, "k": cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")}
    if arch_name not in _SAELENS_ARCHS:
        raise InterpError(f"SAELens architecture '{arch_name}' is not supported: interp reads "
                          f"{', '.join(_SAELENS_ARCHS)}")
    arch, transcoder, skip = _SAELENS_ARCHS[arch_name]
    hook = get("hook_name") or cfg.get("hook_point")
    if get("hook_head_index") is not None:
        raise InterpError(f"the dictionary reads one head ({hook}, head {get('hook_head_index')}), which interp "
                          "does not attach")
    site = hook_to_site(hook)
    out_site = None
    if transcoder:
        out_hook = get("hook_name_out")
        layer = site.split(".")[1]
        out_site = hook_to_site(out_hook) if out_hook else f"mlp_out.{layer}" if site.split(".")[0] in (
            "resid_mid", "mlp_in") else None
        if out_site is None:
            raise InterpError(f"the transcoder reading {hook} names no output hook (metadata.hook_name_out)")
    if "log_threshold" in tensors and "threshold" not in tensors:  # older JumpReLU checkpoints
        tensors = {**tensors, "threshold": tensors["log_threshold"].exp()}
    needed = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if arch == "jumprelu" else []) + (
        ["W_skip"] if skip else [])
    missing = [n for n in needed if n not in tensors]
    if missing:
        raise InterpError(f"sae_weights.safetensors lacks {', '.join(missing)} (a '{arch_name}' dictionary)")
    dtype = _DTYPES.get(str(cfg.get("dtype", "float32")).replace("torch.", ""), torch.float32)
    t = {n: tensors[n].to(dtype) for n in needed}
    norm = cfg.get("normalize_activations") or "none"
    norm = {True: "expected_average_only_in", False: "none"}.get(norm, norm)  # pre-6 booleans
    for key, want in (("d_in", t["W_enc"].shape[0]), ("d_sae", t["W_enc"].shape[1]), ("d_out", t["W_dec"].shape[1])):
        if key in cfg and cfg[key] != want:
            raise InterpError(f"cfg.json says {key} {cfg[key]} but the weights have {want}")
    return Dictionary(arch, t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"], site=site, out_site=out_site,
                      threshold=t.get("threshold"), k=cfg.get("k"), W_skip=t.get("W_skip"),
                      apply_b_dec_to_input=cfg.get("apply_b_dec_to_input", not transcoder),
                      normalize_activations=norm, rescale_acts_by_decoder_norm=cfg.get("rescale_acts_by_decoder_norm",
                                                                                          False),
                      model_name=get("model_name"), cfg=cfg)


def _gemma_site(point: str | None) -> str:
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", point or "")
    if m and m.group(2) == "pre_feedforward_layernorm.output":  # what the MLP reads
        return f"mlp_in.{m.group(1)}"
    if not m or m.group(2) not in _GEMMA_SCOPE_2:
        raise InterpError(f"the Gemma Scope 2 dictionary reads '{point}', which has no interp site")
    return f"{_GEMMA_SCOPE_2[m.group(2)]}.{m.group(1)}"


def _from_gemma_scope_2(folder: Path, tensors: dict[str, torch.Tensor]) -> Dictionary:
    """Gemma Scope 2: JumpReLU, lower-case tensor names, no b_dec on the input, no normalisation."""
    if not (folder / "config.json").is_file():
        raise InterpError(f"{folder} has params.safetensors but no config.json (Gemma Scope 2 keeps its hook there)")
    cfg = _read_json(folder / "config.json")
    if cfg.get("architecture") != "jump_relu":
        raise InterpError(f"Gemma Scope 2 architecture '{cfg.get('architecture')}' is not supported (jump_relu is)")
    missing = [n for n in ("w_enc", "b_enc", "w_dec", "b_dec", "threshold") if n not in tensors]
    if missing:
        raise InterpError(f"{folder / 'params.safetensors'} lacks {', '.join(missing)}")
    out = cfg.get("hf_hook_point_out")
    skip = tensors.get("affine_skip_connection")
    return Dictionary("jumprelu", tensors["w_enc"].float(), tensors["b_enc"].float(), tensors["w_dec"].float(),
                      tensors["b_dec"].float(), threshold=tensors["threshold"].float(),
                      W_skip=None if skip is None else skip.float().T.contiguous(),
                      site=_gemma_site(cfg.get("hf_hook_point_in")), out_site=_gemma_site(out) if out else None,
                      model_name=cfg.get("model_name"), cfg=cfg)


def _saelens_arch(d: Dictionary) -> str:
    if not d.is_transcoder:
        return {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}[d.arch]
    if d.arch == "topk":
        raise InterpError("SAELens 6 has no TopK transcoder, so this dictionary cannot be saved in its layout")
    return ("jumprelu_" if d.arch == "jumprelu" else "") + ("skip_transcoder" if d.W_skip is not None else "transcoder")


def save_dictionary(d: Dictionary, folder: str | Path) -> Path:
    """Write ``d`` as SAELens 6 writes an SAE (``cfg.json`` + ``sae_weights.safetensors``), atomically; returns folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arch = _saelens_arch(d)
    old_meta = dict(d.cfg.get("metadata") or {})
    hook = old_meta.get("hook_name") if _maps_to(old_meta.get("hook_name"), d.site) else site_to_hook(d.site)
    if d.is_transcoder and hook.endswith("hook_resid_mid"):  # the same tensor; transcoders name it the MLP's input
        hook = hook.replace("hook_resid_mid", "hook_mlp_in")
    meta = {**old_meta, "model_name": d.model_name, "hook_name": hook}
    meta.setdefault("sae_lens_version", "6.0.0")
    meta.setdefault("sae_lens_training_version", "6.0.0")
    if d.is_transcoder:
        old = old_meta.get("hook_name_out")
        meta["hook_name_out"] = old if _maps_to(old, d.out_site) else site_to_hook(d.out_site)
    dtype = str(d.W_enc.dtype).replace("torch.", "")
    cfg = {k: v for k, v in d.cfg.items() if k not in ("metadata", "hook_name", "model_name", "hook_name_out")}
    cfg.update({
        "architecture": arch, "d_in": d.d_in, "d_sae": d.d_sae, "dtype": dtype, "device": "cpu",
        "apply_b_dec_to_input": d.apply_b_dec_to_input, "normalize_activations": d.normalize_activations,
        "reshape_activations": "hook_z" if hook.endswith("hook_z") else "none", "metadata": meta,
    })
    if d.is_transcoder:
        cfg["d_out"] = d.d_out
    if d.arch == "topk":
        cfg.update(k=d.k, rescale_acts_by_decoder_norm=d.rescale_acts_by_decoder_norm)
    tensors = {"W_enc": d.W_enc, "b_enc": d.b_enc, "W_dec": d.W_dec, "b_dec": d.b_dec}
    if d.threshold is not None:
        tensors["threshold"] = d.threshold
    if d.W_skip is not None:
        tensors["W_skip"] = d.W_skip
    write_tensors_atomic(folder / "sae_weights.safetensors", tensors)
    write_json_atomic(folder / "cfg.json", cfg)
    return folder


def _maps_to(hook: str | None, site: str | None) -> bool:
    try:
        return hook is not None and hook_to_site(hook) == site
    except InterpError:
        return False
