"""The decoder families interp supports, each as a small declarative `Layout` (plus the config flags that pick it).

Adding a family is one entry here plus one row in the parity matrix (tests/interp/test_families.py).
The forward-pass facts behind each entry are in the module's comments; the parity matrix checks
every one of them against the HF forward on a tiny random model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from interp.adapters.adapter import NormSpec
from interp.adapters.layout import Layout

LAYER_NORM = NormSpec("layer")
GEMMA_NORM = NormSpec("rms", offset=1.0)  # Gemma stores weight - 1: gain = 1 + weight

LLAMA = Layout()
SANDWICH = replace(LLAMA, block="sandwich", norm=GEMMA_NORM, ln2="pre_feedforward_layernorm",
                   attn_post_norm="post_attention_layernorm", mlp_post_norm="post_feedforward_layernorm")


def _gpt2(cfg) -> Layout:
    # Conv1D weights [in, out]; fused c_attn in contiguous thirds; learned positions added once in the model.
    return Layout(layers="transformer.h", embed="transformer.wte", final_norm="transformer.ln_f", norm=LAYER_NORM,
                  attn="attn", q="c_attn", qkv="fused", o="c_proj", act="act", up=None, down="c_proj",
                  ln1="ln_1", ln2="ln_2", conv1d=True)


def _neox(cfg) -> Layout:
    # q/k/v fused per head; parallel residual by default (two norms, both reading the layer input).
    return Layout(layers="gpt_neox.layers", embed="gpt_neox.embed_in", final_norm="gpt_neox.final_layer_norm",
                  norm=LAYER_NORM, block="parallel" if cfg.use_parallel_residual else "sequential",
                  attn="attention", q="query_key_value", qkv="per_head", o="dense", act="act", up=None,
                  down="dense_4h_to_h")


def _gptj(cfg) -> Layout:
    # One ln_1 feeds both branches; the MLP's input is that norm's output.
    return Layout(layers="transformer.h", embed="transformer.wte", final_norm="transformer.ln_f", norm=LAYER_NORM,
                  block="parallel", attn="attn", o="out_proj", act="act", up=None, down="fc_out", ln1="ln_1", ln2=None)


def _falcon(cfg) -> Layout:
    # Three q/k/v layouts; parallel blocks add the attention output into the MLP output in place.
    qkv = "grouped" if cfg.new_decoder_architecture else "multi_query" if cfg.multi_query else "per_head"
    parallel = cfg.parallel_attn or cfg.new_decoder_architecture
    two_norms = cfg.new_decoder_architecture and cfg.num_ln_in_parallel_attn in (None, 2)
    if not parallel:
        ln1, ln2 = "input_layernorm", "post_attention_layernorm"
    else:
        ln1, ln2 = ("ln_attn", "ln_mlp") if two_norms else ("input_layernorm", None)
    return Layout(layers="transformer.h", embed="transformer.word_embeddings", final_norm="transformer.ln_f",
                  norm=LAYER_NORM, block="parallel" if parallel else "sequential", attn="self_attention",
                  q="query_key_value", qkv=qkv, o="dense", act="act", up=None, down="dense_4h_to_h",
                  ln1=ln1, ln2=ln2, ln2_first=two_norms, layer_output_tuple=True)


def _stablelm(cfg) -> Layout:
    # LayerNorm; partial rotary; parallel residual optional, with one norm feeding both branches.
    parallel = cfg.use_parallel_residual
    return replace(LLAMA, norm=LAYER_NORM, block="parallel" if parallel else "sequential",
                   ln2=None if parallel else "post_attention_layernorm",
                   q_norm="q_layernorm" if cfg.qk_layernorm else None, k_norm="k_layernorm" if cfg.qk_layernorm else None,
                   qk_norm_per_head_modules=True)


def _phi3(cfg) -> Layout:
    # Fused q/k/v ([Q|K|V] with GQA sizes) and fused gate_up (gate first).
    return replace(LLAMA, q="qkv_proj", qkv="fused", act="activation_fn", up="gate_up_proj", gate_up_fused=True)


def _granite(cfg) -> Layout:
    # The residual receives each sublayer's output times residual_multiplier; the embedding multiplier and
    # logits_scaling live in the model's forward, so the HF output already has them.
    return replace(LLAMA, residual_multiplier=float(cfg.residual_multiplier))


def _olmo2(cfg) -> Layout:
    # No pre-norms: a norm after each sublayer; q/k norms over the full projection width.
    return replace(LLAMA, block="post_norm", ln1=None, ln2=None, attn_post_norm="post_attention_layernorm",
                   mlp_post_norm="post_feedforward_layernorm", q_norm="q_norm", k_norm="k_norm", qk_norm_each=True)


def _static(layout: Layout) -> Callable[[object], Layout]:
    return lambda cfg: layout


QK_NORM = replace(LLAMA, q_norm="q_norm", k_norm="k_norm", qk_norm_each=True)  # Qwen3: q_proj, q_norm, k_proj, k_norm

# model_type -> (family name, layout from config). Multimodal wrappers are resolved in `interp.adapters`.
FAMILIES: dict[str, tuple[str, Callable[[object], Layout]]] = {
    "llama": ("llama", _static(LLAMA)),
    "mistral": ("mistral", _static(replace(LLAMA, windows_all_layers=True))),
    "qwen2": ("qwen2", _static(LLAMA)),
    "qwen3": ("qwen3", _static(QK_NORM)),
    "qwen3_moe": ("qwen3_moe", _static(replace(QK_NORM, moe="qwen3_moe"))),
    "mixtral": ("mixtral", _static(replace(LLAMA, moe="mixtral", windows_all_layers=True))),
    "smollm3": ("smollm3", _static(LLAMA)),
    "granite": ("granite", _granite),
    "phi3": ("phi3", _phi3),
    "olmo2": ("olmo2", _olmo2),
    "stablelm": ("stablelm", _stablelm),
    "gemma2": ("gemma2", _static(SANDWICH)),
    "gemma3_text": ("gemma3", _static(replace(SANDWICH, q_norm="q_norm", k_norm="k_norm"))),
    "gpt2": ("gpt2", _gpt2),
    "gpt_neox": ("gpt_neox", _neox),
    "gptj": ("gptj", _gptj),
    "falcon": ("falcon", _falcon),
}
# Multimodal checkpoints whose text decoder interp runs (text only): model_type -> (text model_type, backbone path).
MULTIMODAL: dict[str, tuple[str, str]] = {
    "gemma3": ("gemma3_text", "model.language_model"),
}
