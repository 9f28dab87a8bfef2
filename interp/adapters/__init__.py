"""Architecture adapters: the one place that knows HF module paths and config fields.

``adapter_for(config)`` returns the `Adapter` of a model from its HF config alone, so an unsupported
architecture is refused before any weights load (`check_config`). The families and their
declarative layouts are in `interp.adapters.families`; `interp.adapters.layout` turns a layout
and a config into an adapter; `interp.adapters.points` says how a site is read and written at its
module.

>>> from transformers import GPT2Config
>>> adapter_for(GPT2Config(n_layer=2, n_embd=64, n_head=4)).block
'sequential'
"""

from __future__ import annotations

from interp.adapters.adapter import Adapter, NormSpec, norm_eps
from interp.adapters.families import FAMILIES, MULTIMODAL
from interp.adapters.layout import build, with_paths
from interp.adapters.points import INPUT, OUTPUT, RULE, Part, Point, RulePoint
from interp.errors import InterpError

__all__ = [
    "INPUT",
    "OUTPUT",
    "RULE",
    "Adapter",
    "NormSpec",
    "Part",
    "Point",
    "RulePoint",
    "adapter_for",
    "check_config",
    "norm_eps",
    "supported_families",
    "text_config",
]


def supported_families() -> list[str]:
    """The family names interp supports (one per adapter), e.g. llama, gpt2, gemma3."""
    return sorted({family for family, _ in FAMILIES.values()})


def supported_model_types() -> list[str]:
    return sorted([*FAMILIES, *MULTIMODAL])


def text_config(config):
    """The config of the text decoder (the config itself, or a multimodal model's ``text_config``)."""
    if getattr(config, "model_type", None) in MULTIMODAL:
        return config.text_config
    return config


def check_config(config) -> None:
    """A one-line `InterpError` if ``config``'s architecture is not supported (call before loading weights)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES and model_type not in MULTIMODAL:
        raise InterpError(f"architecture '{model_type}' is not supported: interp supports {', '.join(supported_model_types())} "
                          "(`interp models` lists them)")
    if model_type == "falcon" and config.new_decoder_architecture and not config.parallel_attn:
        raise InterpError("this Falcon config (new_decoder_architecture without parallel_attn) does not run in transformers itself")


def adapter_for(config) -> Adapter:
    """The adapter of a model with HF ``config``; a one-line error for architectures interp does not support."""
    check_config(config)
    model_type = config.model_type
    prefix = None
    if model_type in MULTIMODAL:
        model_type, prefix = MULTIMODAL[model_type]
        config = config.text_config
    family, layout_of = FAMILIES[model_type]
    layout = layout_of(config)
    if prefix:
        layout = with_paths(layout, prefix)
    # Gemma3ForConditionalGeneration never applies the text config's final soft-cap
    return build(family, layout, config, caps_logits=prefix is None)
