"""Tiny random models of every supported decoder family, for the parity matrix (test_families.py).

Each `Row` builds one HF model from transformers' config classes (no downloads), with seeded
weights large enough that every path matters (N(0, 0.1) matrices, norms around their neutral
gain). ``ref`` is the test's *own* description of where each sublayer's contribution to the
residual is and what multiplies it, written independently of `interp.adapters`, so the brute-force
patching reference checks the adapters rather than repeats them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import transformers as T

import interp
from interp.models import _load_tokenizer

SEQ = 12  # prompt length: longer than every sliding window below (4)
WINDOW = 4


@dataclass(frozen=True)
class Ref:
    """Where the test itself says things are: layers, attention/MLP contribution modules, o_proj, multiplier."""

    layers: str
    attn_out: str  # module (relative to the layer) whose output[0] (or output) is what attention adds
    mlp_out: str
    o_proj: str  # module whose input is the per-head z
    scale: float = 1.0


@dataclass(frozen=True)
class Row:
    id: str
    config: type
    model: type
    kwargs: dict
    ref: Ref
    norm_center: float = 1.0  # Gemma stores gain - 1
    lens: bool = True  # TransformerLens's bridge wraps this family
    extra: dict = field(default_factory=dict)


LLAMA_REF = Ref("model.layers", "self_attn", "mlp", "self_attn.o_proj")
SANDWICH_REF = Ref("model.layers", "post_attention_layernorm", "post_feedforward_layernorm", "self_attn.o_proj")
GQA = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96, num_hidden_layers=3)

ROWS = [
    Row("llama", T.LlamaConfig, T.LlamaForCausalLM, dict(GQA, tie_word_embeddings=False), LLAMA_REF),
    Row("llama-bias", T.LlamaConfig, T.LlamaForCausalLM, dict(GQA, attention_bias=True, mlp_bias=True), LLAMA_REF),
    Row("mistral-window", T.MistralConfig, T.MistralForCausalLM, dict(GQA, sliding_window=WINDOW), LLAMA_REF),
    Row("qwen2-window", T.Qwen2Config, T.Qwen2ForCausalLM,
        dict(GQA, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1), LLAMA_REF),
    Row("qwen3-headdim", T.Qwen3Config, T.Qwen3ForCausalLM, dict(GQA, head_dim=24), LLAMA_REF),
    Row("qwen3moe", T.Qwen3MoeConfig, T.Qwen3MoeForCausalLM,
        dict(GQA, head_dim=16, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2, decoder_sparse_step=2,
             mlp_only_layers=[2], norm_topk_prob=False), LLAMA_REF),
    Row("qwen3moe-renorm", T.Qwen3MoeConfig, T.Qwen3MoeForCausalLM,
        dict(GQA, head_dim=16, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2, norm_topk_prob=True),
        LLAMA_REF),
    Row("mixtral", T.MixtralConfig, T.MixtralForCausalLM, dict(GQA, num_local_experts=4, num_experts_per_tok=2), LLAMA_REF),
    Row("smollm3-nope", T.SmolLM3Config, T.SmolLM3ForCausalLM, dict(GQA, no_rope_layer_interval=2, pad_token_id=0), LLAMA_REF),
    Row("granite", T.GraniteConfig, T.GraniteForCausalLM,
        dict(GQA, embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.2, logits_scaling=4.0),
        Ref("model.layers", "self_attn", "mlp", "self_attn.o_proj", scale=0.5)),
    Row("phi3", T.Phi3Config, T.Phi3ForCausalLM, dict(GQA, pad_token_id=0), LLAMA_REF),
    Row("olmo2", T.Olmo2Config, T.Olmo2ForCausalLM, GQA,
        Ref("model.layers", "post_attention_layernorm", "post_feedforward_layernorm", "self_attn.o_proj")),
    Row("stablelm", T.StableLmConfig, T.StableLmForCausalLM, dict(GQA, qk_layernorm=True), LLAMA_REF),
    Row("stablelm-parallel", T.StableLmConfig, T.StableLmForCausalLM, dict(GQA, use_parallel_residual=True), LLAMA_REF),
    Row("gemma2-caps", T.Gemma2Config, T.Gemma2ForCausalLM,
        dict(GQA, head_dim=16, sliding_window=WINDOW, final_logit_softcapping=2.0, attn_logit_softcapping=5.0),
        SANDWICH_REF, norm_center=0.0),
    Row("gemma3-softcap", T.Gemma3TextConfig, T.Gemma3ForCausalLM,
        dict(GQA, head_dim=16, sliding_window=WINDOW, final_logit_softcapping=2.0, query_pre_attn_scalar=16),
        SANDWICH_REF, norm_center=0.0),
    Row("gemma3-multimodal", T.Gemma3Config, T.Gemma3ForConditionalGeneration, {},
        Ref("model.language_model.layers", "post_attention_layernorm", "post_feedforward_layernorm", "self_attn.o_proj"),
        norm_center=0.0, extra={"multimodal": True}),
    Row("gpt2", T.GPT2Config, T.GPT2LMHeadModel, dict(n_embd=64, n_head=4, n_layer=3, n_positions=64),
        Ref("transformer.h", "attn", "mlp", "attn.c_proj")),
    Row("neox-parallel", T.GPTNeoXConfig, T.GPTNeoXForCausalLM,
        dict(hidden_size=64, num_attention_heads=4, intermediate_size=96, num_hidden_layers=3, rotary_pct=0.5),
        Ref("gpt_neox.layers", "attention", "mlp", "attention.dense")),
    Row("neox-sequential", T.GPTNeoXConfig, T.GPTNeoXForCausalLM,
        dict(hidden_size=64, num_attention_heads=4, intermediate_size=96, num_hidden_layers=3, use_parallel_residual=False),
        Ref("gpt_neox.layers", "attention", "mlp", "attention.dense")),
    Row("gptj", T.GPTJConfig, T.GPTJForCausalLM, dict(n_embd=64, n_head=4, n_layer=3, rotary_dim=8, n_positions=64),
        Ref("transformer.h", "attn", "mlp", "attn.out_proj")),
    Row("falcon-mqa", T.FalconConfig, T.FalconForCausalLM, dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=3),
        Ref("transformer.h", "self_attention", "mlp", "self_attention.dense")),
    Row("falcon-mha-sequential", T.FalconConfig, T.FalconForCausalLM,
        dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=3, multi_query=False, parallel_attn=False),
        Ref("transformer.h", "self_attention", "mlp", "self_attention.dense")),
    Row("falcon-newarch-kv2", T.FalconConfig, T.FalconForCausalLM,
        dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=3, new_decoder_architecture=True, num_kv_heads=2),
        Ref("transformer.h", "self_attention", "mlp", "self_attention.dense")),
    Row("falcon-alibi", T.FalconConfig, T.FalconForCausalLM,
        dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=3, alibi=True, multi_query=False),
        Ref("transformer.h", "self_attention", "mlp", "self_attention.dense")),
]
ROW_IDS = [row.id for row in ROWS]
BY_ID = {row.id: row for row in ROWS}


@functools.lru_cache(maxsize=1)
def tokenizer():
    return _load_tokenizer("smollm2-135m")


def _config(row: Row):
    vocab = len(tokenizer())
    if row.extra.get("multimodal"):
        text = T.Gemma3TextConfig(vocab_size=vocab, **GQA, head_dim=16, sliding_window=WINDOW, query_pre_attn_scalar=16)
        vision = T.SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      image_size=16, patch_size=8)
        config = T.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                image_token_index=vocab - 1, boi_token_index=vocab - 2, eoi_token_index=vocab - 3)
    else:
        config = row.config(vocab_size=vocab, **row.kwargs)
    config._attn_implementation = "eager"
    if hasattr(config, "_experts_implementation"):
        config._experts_implementation = "eager"
    return config


def _randomize(model: torch.nn.Module, center: float, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    norm_params = {f"{name}.{p}" for name, m in model.named_modules() if "Norm" in type(m).__name__ for p, _ in m.named_parameters(recurse=False)}
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name in norm_params:
                param.copy_((center if name.endswith("weight") else 0.0) + 0.1 * noise)
            else:
                param.copy_((0.2 if param.ndim == 2 and param.shape[0] == len(tokenizer()) else 0.1) * noise)


@functools.cache
def build(row_id: str) -> interp.Model:
    """The tiny random model of one row, as an `interp.Model` (built once per test session)."""
    row = BY_ID[row_id]
    config = _config(row)
    with torch.random.fork_rng(devices=[]):
        hf = row.model(config)
    _randomize(hf, row.norm_center)
    hf.eval().requires_grad_(False)
    return interp.Model(row.id, hf, tokenizer(), backend="torch")


def tokens(model: interp.Model, n: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean, corrupt) random token ids [n, SEQ] differing at two positions (5 and 8)."""
    generator = torch.Generator().manual_seed(seed)
    high = min(model.d_vocab, 5000)
    clean = torch.randint(10, high, (n, SEQ), generator=generator)
    corrupt = clean.clone()
    corrupt[:, [5, 8]] = torch.randint(10, high, (n, 2), generator=generator)
    return clean, corrupt
