"""Chat formatting: one user turn in the model's own chat template, ready for the assistant's reply."""

from __future__ import annotations

from typing import TYPE_CHECKING

from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.model import Model


def chat_prompt(model: Model, message: str, system: str | None = None) -> str:
    """``message`` as one user turn in the model's chat template, ready for the assistant's reply.

    ``system=None`` keeps the template's own default (SmolLM2: "You are a helpful AI assistant
    named SmolLM..."). A leading BOS text is dropped when the tokenizer adds BOS itself.
    """
    tok = model.tokenizer
    if not getattr(tok, "chat_template", None):
        raise InterpError(f"{model.name}'s tokenizer has no chat template; use an instruction-tuned model such as smollm2-135m")
    turns = ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": message}]
    text = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    bos = tok.bos_token
    if bos and text.startswith(bos) and tok("a")["input_ids"][:1] == [tok.bos_token_id]:
        text = text[len(bos):]
    return text
