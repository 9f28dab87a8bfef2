"""Retrieval heads: NIAH prompts, copy-event scoring on a hand-built copy head, uniform-attention masking."""

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import interp
from interp.circuits.haystack import NEEDLES, Needle, NeedlePrompt, niah_prompt, niah_prompts
from interp.circuits.retrieval import (
    UniformAttention,
    decode,
    detect_retrieval_heads,
    masking_curve,
    prefill,
    random_heads,
    rouge1_recall,
)
from interp.errors import InterpError

D, HEAD_DIM, BETA, GAIN = 128, 64, 160.0, 3.0
NEEDLE_WORDS = [" seven", " purple", " whales", " dance", " quietly"]
HAY_WORDS = [" the", " and", " of", " a", " stone", " cloud", " field", " road", " river", " copper"]
TRIGGER = ":"


def _copy_head_model(tokenizer) -> interp.Model:
    """A 2-layer Llama whose head (0, 0) copies the needle and whose 7 other heads attend at random.

    Every word used gets an orthonormal embedding direction o_t (scaled to RMS 1, so RMSNorm is the
    identity on it) and the unembedding row o_t. Head (0, 0) has a hand-set successor table
    succ(":") = needle[0], succ(needle[j]) = needle[j + 1]: its query for token a is BETA * u_succ(a)
    and a needle token b has key u_b (orthonormal u's in the RoPE dimensions whose rotation is below
    1e-6 rad per position, rope_theta = 1e12), so it attends to the needle position of the next needle
    token, whose value it writes back as GAIN * o_b: greedy decoding after ":" prints the needle, each
    step attending to the token it emits (one copy event per needle token: score 1). The other heads
    have random queries/keys (head (0, 1) shares the copy head's keys, in the fast-rotating
    dimensions) and zero output weights; MLPs write nothing.
    """
    ids = {w: tokenizer(w, add_special_tokens=False)["input_ids"] for w in NEEDLE_WORDS + HAY_WORDS + [TRIGGER]}
    assert all(len(v) == 1 for v in ids.values())
    tok = {w: v[0] for w, v in ids.items()}
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=D, intermediate_size=16, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=HEAD_DIM, rope_theta=1e12,
                      max_position_embeddings=8192, tie_word_embeddings=False, attn_implementation="eager")
    hf = LlamaForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    o = torch.linalg.qr(torch.randn(D, D, generator=gen))[0].T  # rows: orthonormal directions
    direction = {w: o[i] for i, w in enumerate(tok)}
    needle = [direction[w] for w in NEEDLE_WORDS]
    succ = dict(zip([TRIGGER] + NEEDLE_WORDS[:-1], NEEDLE_WORDS))
    slow = 16  # dims 16..31 (paired with 48..63) barely rotate
    with torch.no_grad():
        for p in hf.parameters():
            p.requires_grad_(False)
        hf.model.embed_tokens.weight.normal_(generator=gen)
        hf.lm_head.weight.zero_()
        for w, t in tok.items():
            hf.model.embed_tokens.weight[t] = D**0.5 * direction[w]
            hf.lm_head.weight[t] = direction[w]
        for layer in hf.model.layers:
            att = layer.self_attn
            for proj in (att.q_proj, att.k_proj, att.v_proj):
                proj.weight.normal_(generator=gen).mul_(D**-0.5)
            att.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        att = hf.model.layers[0].self_attn
        q, k, v = att.q_proj.weight, att.k_proj.weight, att.v_proj.weight  # [heads * HEAD_DIM, D]
        q[:HEAD_DIM] = 0
        k[slow:HEAD_DIM] = 0
        k[HEAD_DIM // 2:HEAD_DIM] = 0  # kv head 0: random keys only in the fast dims 0..15 (+ their RoPE pairs)
        v[:HEAD_DIM] = 0
        for a, b in succ.items():
            q[slow + NEEDLE_WORDS.index(b)] += BETA * direction[a] / D**0.5
        for j, b in enumerate(NEEDLE_WORDS):
            k[slow + j] = direction[b] / D**0.5
            v[j] = direction[b] / D**0.5
            att.o_proj.weight[:, j] = GAIN * D**0.5 * needle[j]
    return interp.Model("copy-head", hf, tokenizer), tok


@pytest.fixture(scope="module")
def copy_model(tiny_llama):
    return _copy_head_model(tiny_llama.tokenizer)


def _copy_prompt(tok, n_hay=120, at=40, seed=1) -> NeedlePrompt:
    gen = torch.Generator().manual_seed(seed)
    hay = [tok[HAY_WORDS[int(i)]] for i in torch.randint(len(HAY_WORDS), (n_hay,), generator=gen)]
    needle = [tok[w] for w in NEEDLE_WORDS]
    ids = hay[:at] + needle + hay[at:] + [tok[" road"], tok[TRIGGER]]
    return NeedlePrompt(tuple(ids), (at, at + len(needle)), "".join(NEEDLE_WORDS))


def test_copy_head_scores_one_and_others_near_zero(copy_model):
    model, tok = copy_model
    prompts = [_copy_prompt(tok, at=at, seed=s) for s, at in [(1, 40), (2, 0), (3, 115)]]
    scores = detect_retrieval_heads(model, prompts, max_new_tokens=8)
    assert scores.n_success == 3 and scores.recall.min() == 1.0
    assert scores.responses[0].startswith("".join(NEEDLE_WORDS))
    # independent count: 5 needle tokens, one copy event each, / needle length 5
    assert scores.head_score[0, 0] == pytest.approx(1.0)
    others = scores.head_score.clone()
    others[0, 0] = 0
    assert others.max() < 0.25
    assert scores.retrieval_heads()[0] == (0, 0) and scores.top(1) == [(0, 0)]


def test_failed_tests_do_not_count(copy_model):
    model, tok = copy_model
    good = _copy_prompt(tok)
    bad = NeedlePrompt(good.ids, good.needle_span, "completely different words here")
    scores = detect_retrieval_heads(model, [good, bad], max_new_tokens=8)
    assert scores.success.tolist() == [True, False]
    assert scores.per_test[1, 0, 0] == pytest.approx(1.0)  # events happen, but the failed test is left out
    assert torch.allclose(scores.head_score, scores.per_test[0])


def test_masking_the_copy_head_breaks_recall_random_heads_do_not(copy_model):
    model, tok = copy_model
    prompts = [_copy_prompt(tok, seed=s) for s in (1, 2)]
    scores = detect_retrieval_heads(model, prompts, max_new_tokens=8)
    curve = masking_curve(model, prompts, scores, ks=[0, 1, 3], n_random=2, max_new_tokens=8)
    assert curve.k.tolist() == [0, 1, 3] and curve.recall_clean == 1.0
    assert curve.recall_top[0] == 1.0 and curve.recall_random[0] == 1.0
    assert curve.recall_top[1] < 0.3 and curve.recall_random[1] == 1.0  # random heads have zero W_O here
    for draw in curve.random_heads[2]:
        assert (0, 0) not in draw and len(set(draw)) == 3
    assert set(curve.tensors()) == {"retrieval/k", "retrieval/recall_top", "retrieval/recall_random"}


def test_uniform_attention_changes_exactly_that_head(tiny_llama):
    model = tiny_llama
    ids = torch.tensor([model.to_tokens("The quiet harbour woke slowly as the boats went out")[0].tolist()])
    n = ids.shape[1]
    prompt = NeedlePrompt(tuple(ids[0].tolist()), (1, 3), "x")
    reads = ["head_out.0", "head_out.1"]
    for chunk in (1, 3):  # one decode token, and a chunk of 3 (causal means)
        past = prefill(model, NeedlePrompt(prompt.ids[: n - chunk + 1], (1, 3), "x"))

        clean, _ = model.run_cached(ids[:, n - chunk:], read=reads, past=copy.deepcopy(past))
        edit = UniformAttention("head_out.1", (2,), past)
        masked, _ = model.run_cached(ids[:, n - chunk:], [edit], read=reads, past=past)
        assert torch.equal(masked.acts["head_out.0"], clean.acts["head_out.0"])
        keep = [0, 1, 3]
        assert torch.allclose(masked.acts["head_out.1"][:, :, keep], clean.acts["head_out.1"][:, :, keep], atol=1e-6)
        # hand computation: v = W_V . RMSNorm(resid_pre.1) for every position, kv head 2 // 2 = 1
        layer = model.hf.model.layers[1]
        x = model.run(ids, read=["resid_pre.1"]).acts["resid_pre.1"]
        v = layer.self_attn.v_proj(layer.input_layernorm(x)).unflatten(-1, (model.n_kv_heads, model.d_head))[0, :, 1]
        for q in range(chunk):
            visible = n - chunk + q + 1
            assert torch.allclose(masked.acts["head_out.1"][0, q, 2], v[:visible].mean(0), atol=1e-5)
        assert not torch.allclose(masked.logits, clean.logits)


def test_uniform_attention_rejects_bad_use(tiny_llama):
    with pytest.raises(InterpError, match="KV cache"):
        UniformAttention("head_out.0", (0,)).apply(torch.zeros(1, 1, 4, 16))
    with pytest.raises(InterpError, match="head_out"):
        UniformAttention("resid_pre.0", (0,), object()).apply(torch.zeros(1, 1, 4, 16))


def test_cached_attention_row_matches_both_backends(tiny_llama):
    model = tiny_llama
    ids = model.to_tokens("A lantern hung by the door of the small stone house")
    past = prefill(model, NeedlePrompt(tuple(ids[0].tolist()), (0, 1), "x"))
    out, _ = model.run_cached(ids[:, -1:], read=["attn_pattern.1"], past=past)
    row = out.acts["attn_pattern.1"][0, :, -1]  # [head, keys]
    assert row.shape == (model.n_heads, ids.shape[1])
    for backend in ("lens", "nnsight"):
        full = model.run(ids, read=["attn_pattern.1"], backend=backend).acts["attn_pattern.1"][0, :, -1]
        assert torch.allclose(row, full, atol=1e-5), backend


def test_rouge1_recall_by_hand():
    assert rouge1_recall("green green umbrella", "a green umbrella") == pytest.approx(2 / 3)
    assert rouge1_recall("The GREEN, umbrella!", "green umbrella") == 1.0
    assert rouge1_recall("", "green") == 0.0
    assert rouge1_recall("the the the", "the cat the") == pytest.approx(2 / 3)  # clipped counts
    with pytest.raises(InterpError):
        rouge1_recall("x", "...")


@pytest.mark.parametrize("template", ["plain", "chat"])
def test_niah_prompt_places_the_needle(tiny_llama, template):
    tokenizer = tiny_llama.tokenizer
    for depth in (0, 37, 100):
        p = niah_prompt(tokenizer, NEEDLES[1], 400, depth, template)
        start, end = p.needle_span
        assert len(p.ids) == 400
        assert tokenizer.decode(list(p.ids[start:end])).strip() == NEEDLES[1].needle
        text = tokenizer.decode(list(p.ids))
        assert text.count(NEEDLES[1].needle) == 1 and NEEDLES[1].question in text
        if depth == 0 and template == "plain":
            assert start == 0
        elif start > 0:
            assert tokenizer.decode(list(p.ids[start - 1:start])).rstrip()[-1] in ".!?>\n"
    late, early = niah_prompt(tokenizer, NEEDLES[1], 400, 90, template), niah_prompt(tokenizer, NEEDLES[1], 400, 10, template)
    assert late.needle_span[0] > early.needle_span[0]


def test_niah_prompts_long_context_and_errors(tiny_llama):
    tokenizer = tiny_llama.tokenizer
    ps = niah_prompts(tokenizer, [8000], [50], needles=NEEDLES[:1], template="plain")
    assert len(ps) == 1 and len(ps[0].ids) == 8000 and ps[0].context_len == 8000
    with pytest.raises(InterpError, match="no room"):
        niah_prompt(tokenizer, NEEDLES[0], 20, 50)
    with pytest.raises(InterpError, match="depth"):
        niah_prompt(tokenizer, NEEDLES[0], 500, 120)
    with pytest.raises(InterpError, match="template"):
        niah_prompt(tokenizer, Needle("x.", "y?"), 500, 0, "fancy")
    with pytest.raises(InterpError, match="span"):
        NeedlePrompt((1, 2, 3), (2, 5), "x")


def test_random_heads_exclude_top_and_retrieval_heads(copy_model):
    model, tok = copy_model
    scores = detect_retrieval_heads(model, [_copy_prompt(tok)], max_new_tokens=8)
    scores.head_score = torch.zeros(2, 4)
    scores.head_score[0, 0], scores.head_score[1, 3], scores.head_score[0, 1] = 1.0, 0.5, 0.05
    assert scores.retrieval_heads() == [(0, 0), (1, 3)] and scores.fraction_above() == 0.25
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(30):
        heads = random_heads(scores, 3, gen)  # excluded: the top 3 = (0,0), (1,3), (0,1)
        assert len(set(heads)) == 3 and not {(0, 0), (1, 3), (0, 1)} & set(heads)
        seen |= set(heads)
    assert len(seen) == 5  # every other head gets drawn
    with pytest.raises(InterpError, match="random heads"):
        random_heads(scores, 5, gen)


@pytest.mark.real_model
def test_smollm2_finds_a_needle_and_retrieval_heads(smollm2):
    prompt = niah_prompt(smollm2.tokenizer, NEEDLES[2], 250, 50)
    out = decode(smollm2, prompt, max_new_tokens=24)
    assert rouge1_recall(out.text, prompt.answer) > 0.5
    needle_len = prompt.needle_span[1] - prompt.needle_span[0]
    assert out.events.max() / needle_len > 0.5  # some head copies most of the needle
    assert (out.events / needle_len > 0.1).float().mean() < 0.25  # and most heads do not


# ---------------------------------------------------------------- batched decoding: the same numbers as one at a time

def _reference_decode(model, prompt, max_new_tokens, masked=(), track=True):
    """The decode loop as it was before batching (one prompt, batch size 1), kept here as the reference."""
    from interp.circuits.retrieval import _stops, uniform_attention

    past = prefill(model, prompt)
    read = [f"attn_pattern.{layer}" for layer in range(model.n_layers)] if track else []
    start, end = prompt.needle_span
    seq = list(prompt.ids)
    events = torch.zeros(model.n_layers, model.n_heads)
    generated = []
    for _ in range(max_new_tokens):
        out, past = model.run_cached(torch.tensor([seq[-1:]]), uniform_attention(masked, past), read, past)
        token = int(out.logits[0, -1].argmax())
        generated.append(token)
        if track:
            rows = torch.stack([out.acts[s][0, :, -1] for s in read])
            top = rows.argmax(-1).cpu()
            held = torch.tensor(prompt.ids)[top.clamp(start, end - 1)]
            events += (((top >= start) & (top < end)) & (held == token)).float()
        seq.append(token)
        if _stops(model, token):
            break
    return generated, events


def test_batched_detection_and_masking_equal_one_prompt_at_a_time(copy_model, tiny_llama):
    from interp.circuits.retrieval import decode_batch, length_batches

    model, tok = copy_model
    # equal lengths batch together; the mix of needle places makes rows stop (or not) at different steps
    prompts = [_copy_prompt(tok, at=at, seed=s) for s, at in [(1, 40), (2, 0), (3, 115), (4, 7)]]
    prompts.append(_copy_prompt(tok, n_hay=60, at=10, seed=5))  # another length: its own batch
    assert length_batches(model, prompts, 8) == [[0, 1, 2, 3], [4]]
    kept = {}
    batched = detect_retrieval_heads(model, prompts, max_new_tokens=8, prefills=kept)
    assert sorted(kept) == [0, 1, 2, 3, 4]  # each prompt's prefill cache, for the masking pass to reuse
    for i, p in enumerate(prompts):
        tokens, events = _reference_decode(model, p, 8)
        assert batched.responses[i] == model.tokenizer.decode(tokens, skip_special_tokens=True)
        assert torch.equal(batched.per_test[i], events / (p.needle_span[1] - p.needle_span[0]))
    curves = [masking_curve(model, prompts[:4], batched, ks=[0, 2], n_random=1, max_new_tokens=6, batch_size=b,
                            prefills=reuse) for b, reuse in ((None, None), (1, None), (None, kept))]
    for curve in curves[1:]:
        for name in ("k", "recall_top", "recall_random"):
            assert torch.equal(getattr(curves[0], name), getattr(curve, name)), name
        assert curves[0].recall_clean == curve.recall_clean and curves[0].random_heads == curve.random_heads
    assert sorted(kept) == [4]  # the reused caches are handed over once used
    # a real (random) model, whose rows stop at a newline at different steps: texts and events match the reference
    real = niah_prompts(tiny_llama.tokenizer, [120], [0, 100], template="plain")
    for p, out in zip(real, decode_batch(tiny_llama, real, 6)):
        tokens, events = _reference_decode(tiny_llama, p, 6)
        assert out.tokens == tokens and torch.equal(out.events, events)
    for p, out in zip(real, decode_batch(tiny_llama, real, 6, masked=[(0, 1), (1, 3)], track=False)):
        assert out.tokens == _reference_decode(tiny_llama, p, 6, [(0, 1), (1, 3)], False)[0]
