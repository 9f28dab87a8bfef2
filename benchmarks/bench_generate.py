"""Steered greedy generation speed: interp (KV cache / lens recompute) vs TransformerLens vs plain HF.

All four do the same work in one process: greedy decoding of --max-new-tokens tokens (no stop at
end-of-text) from --n-prompts prompts of equal token length, batched, with ``coeff * v`` added to
the residual stream after block --layer at every position (prompt and generated):

  (a) interp default: ``interp.steering.generate.generate(model, prompts, {"resid_post.L": v}, coeff=c)``,
      which keeps a KV cache and runs only the new token each step (`Model.run_cached`);
  (b) the same call with ``backend="lens"``: reruns the whole sequence through the
      TransformerBridge each step (no cache);
  (c) TransformerLens's own ``TransformerBridge.generate`` on the bridge interp's lens backend built
      (``model.backend("lens").bridge``), a fwd hook on ``blocks.L.hook_resid_post`` installed with
      ``bridge.hooks(...)``; it uses TL's KV cache (``use_past_kv_cache=True`` is its default);
  (d) plain HF ``model.hf.generate`` (DynamicCache) with a torch forward hook on
      ``model.hf.model.layers[L]`` adding ``c * v`` to its output.

Each is warmed up once, then the best of --repeats is kept. Prints seconds, ratio vs (a), generated
tokens/s, and whether every continuation matches (a)'s text, with the first divergence if not.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_generate.py [--n-prompts 8] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import copy
import time
from collections import Counter

import torch

import interp
from interp.steering.generate import generate

POOL = [  # 5 tokens each with the SmolLM2 tokenizer; pick_prompts checks
    "The capital of France is", "In the morning I usually", "The history of Rome began", "The city of London is",
    "Computers are useful because", "The ocean is full of", "Every morning the sun rises", "Birds can fly because they",
    "Paris is famous for its", "The doctor told me that", "Children love to play with", "The train to Berlin leaves",
    "The river flows into the", "My teacher always says that", "The garden is full of",
]


def pick_prompts(tokenizer, n: int) -> tuple[list[str], int]:
    """``n`` prompts from POOL sharing the most common token length (checked)."""
    lens = {p: len(tokenizer(p)["input_ids"]) for p in POOL}
    length, count = Counter(lens.values()).most_common(1)[0]
    if count < n:
        raise SystemExit(f"only {count} pool prompts share a token length ({length}); ask for --n-prompts <= {count}")
    return [p for p in POOL if lens[p] == length][:n], length


def best_of(fn, repeats: int):
    out = fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def first_divergence(ref: list[str], got: list[str]) -> str:
    bad = [i for i, (a, b) in enumerate(zip(ref, got)) if a != b]
    if not bad:
        return "match"
    i = bad[0]
    k = next((j for j, (x, y) in enumerate(zip(ref[i], got[i])) if x != y), min(len(ref[i]), len(got[i])))
    return (f"{len(bad)}/{len(ref)} differ; prompt {i} at char {k}: "
            f"{ref[i][max(0, k - 10):k + 15]!r} vs {got[i][max(0, k - 10):k + 15]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n-prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--coeff", type=float, default=1.0)
    parser.add_argument("--norm", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    model = interp.load(args.model)
    tok, n_new, c, layer = model.tokenizer, args.max_new_tokens, args.coeff, args.layer
    prompts, plen = pick_prompts(tok, args.n_prompts)
    tokens = model.to_tokens(prompts)  # raises if the lengths differ
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))
    v = (v * args.norm / v.norm()).to(model.device)
    bridge = model.backend("lens").bridge  # the TransformerBridge interp booted (on a private copy of the HF model)
    print(f"{model!r}; {len(prompts)} prompts x {plen} tokens, {n_new} new tokens, layer {layer}, "
          f"coeff {c}, |v|={v.norm():.2f}, torch threads {torch.get_num_threads()}")

    def decode(ids: torch.Tensor) -> list[str]:
        return [tok.decode(row[plen:]) for row in ids]  # as steering.generate decodes

    def run_a():
        return generate(model, prompts, {f"resid_post.{layer}": v}, coeff=c, max_new_tokens=n_new)

    def run_b():
        return generate(model, prompts, {f"resid_post.{layer}": v}, coeff=c, max_new_tokens=n_new, backend="lens")

    def tl_hook(x, hook):
        return x + c * v

    def run_c():
        with bridge.hooks(fwd_hooks=[(f"blocks.{layer}.hook_resid_post", tl_hook)]):
            out = bridge.generate(tokens, max_new_tokens=n_new, do_sample=False, stop_at_eos=False, verbose=False)
        return decode(out)

    gen_cfg = copy.deepcopy(model.hf.generation_config)
    gen_cfg.update(do_sample=False, temperature=None, top_p=None, top_k=None, max_new_tokens=n_new,
                   eos_token_id=[])  # [], not None: None is refilled from the model config (EOS 2)

    def hf_hook(module, inputs, output):
        if isinstance(output, tuple):
            return (output[0] + c * v,) + tuple(output[1:])
        return output + c * v

    def run_d():
        handle = model.hf.model.layers[layer].register_forward_hook(hf_hook)
        try:
            out = model.hf.generate(tokens, attention_mask=torch.ones_like(tokens), generation_config=gen_cfg)
        finally:
            handle.remove()
        assert out.shape[1] == plen + n_new, out.shape
        return decode(out)

    runs = [("(a) interp generate, KV cache (run_cached)", run_a),
            ("(b) interp generate, backend='lens' (recompute)", run_b),
            ("(c) TL bridge.generate + hooks (TL KV cache)", run_c),
            ("(d) HF generate + torch hook (DynamicCache)", run_d)]
    results = [(name, *best_of(fn, args.repeats)) for name, fn in runs]

    ref_time, ref_text = results[0][1], results[0][2]
    n_tok = len(prompts) * n_new
    print(f"\n{'method':50s} {'seconds':>8s} {'x (a)':>7s} {'tok/s':>8s}  outputs vs (a)")
    for name, secs, texts in results:
        print(f"{name:50s} {secs:8.3f} {secs / ref_time:7.2f} {n_tok / secs:8.1f}  {first_divergence(ref_text, texts)}")
    print(f"\n(best of {args.repeats} after one warm-up; tok/s = {len(prompts)} x {n_new} generated tokens / seconds)")
    print(f"sample (a) continuation 0: {ref_text[0]!r}")


if __name__ == "__main__":
    main()
