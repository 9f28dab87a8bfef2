"""Faithfulness statistics, and `interp patch`-style runs with activation and AtP together."""

import math

import torch

from interp.ioi import generate_ioi
from interp.metrics import MetricContext, get_metric
from interp.results import load_run
from interp.patching.attribution import atp
from interp.patching.faithfulness import faithfulness, pearson
from interp.patching.run import activation_patching


def test_pearson_matches_the_textbook_formula():
    a = torch.tensor([1.0, 2.0, 4.0, 7.0, 3.0], dtype=torch.float64)
    b = torch.tensor([2.0, 1.0, 5.0, 9.0, 2.5], dtype=torch.float64)
    am, bm = a - a.mean(), b - b.mean()
    expected = float((am * bm).sum() / math.sqrt(float((am**2).sum() * (bm**2).sum())))
    assert abs(pearson(a, b) - expected) < 1e-9


def test_faithfulness_of_identical_negated_and_monotone_estimates():
    truth = torch.tensor([[0.0, 3.0, -1.0], [5.0, 0.5, 2.0]])
    assert faithfulness(truth, truth, base=0.0, k=2) == {"pearson": 1.0, "spearman": 1.0, "top2_overlap": 1.0}
    neg = faithfulness(truth, -truth, base=0.0, k=2)
    assert neg["pearson"] == -1.0 and neg["spearman"] == -1.0 and neg["top2_overlap"] == 1.0
    cubed = faithfulness(truth, truth**3, base=0.0, k=3)  # monotone but not linear
    assert cubed["spearman"] == 1.0 and cubed["pearson"] < 1.0
    # effects are measured from the base: shifting both grids by the base changes nothing
    assert faithfulness(truth + 7, truth + 7, base=7.0, k=2)["top2_overlap"] == 1.0


def test_run_with_activation_and_atp(tiny_llama, tmp_path):
    prompts = generate_ioi(tiny_llama.tokenizer, 3, seed=2)
    comps = ["resid_pre", "head_out"]
    run = activation_patching(tiny_llama, prompts, comps, methods=["activation", "atp"], out=tmp_path / "run")
    back = load_run(tmp_path / "run")
    assert back.manifest["methods"] == ["activation", "atp"]
    tokens = prompts.tokenize(tiny_llama.tokenizer)
    metric = get_metric("logit_diff")
    with torch.no_grad():
        clean = tiny_llama.run(tokens.clean, read=[f"{k}.{layer}" for k in ("resid_pre", "head_out") for layer in range(2)])
        corrupt = tiny_llama.run(tokens.corrupt)
    ctx = MetricContext(tokens.answer, tokens.wrong, clean.logits[:, -1], corrupt.logits[:, -1])
    base = float(metric(ctx.corrupt_logits, ctx).mean())
    for comp in comps:
        expected = atp(tiny_llama, comp, tokens.corrupt, clean.acts, metric, ctx)
        assert torch.allclose(back.scores[f"atp/{comp}/per_prompt"], expected, atol=1e-5)
        want = faithfulness(back.scores[f"activation/{comp}"], back.scores[f"atp/{comp}"], base)
        assert back.manifest["faithfulness"]["atp"][comp] == want
    assert run.manifest["faithfulness"] == back.manifest["faithfulness"]
