"""The steering detector: scores against hand computations, calibrated false-positive rates, a planted vector."""

import numpy as np
import pytest
import torch

from interp.chat import chat_prompt
from interp.errors import InterpError
from interp.steering.behaviour_sets import HARMLESS, TRUTHFULNESS
from interp.steering.detector import Detector, detection_rates, fit_detector, site_activations

TEXTS = [q for q, _, _ in TRUTHFULNESS[:30]] + HARMLESS  # 50 plain prompts of varied length
CALIB, HELD = TEXTS[::2], TEXTS[1::2]


def planted(model, layer: int, scale: float) -> torch.Tensor:
    """A random direction whose norm is ``scale`` times the mean clean token norm at ``resid_post.<layer>``."""
    acts = site_activations(model, CALIB[:5], f"resid_post.{layer}")
    mean_norm = torch.cat([a[1:] for a in acts]).norm(dim=-1).mean()
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(7))
    return v / v.norm() * mean_norm * scale


def test_scores_are_the_documented_formulas():
    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(3, 6, 4, generator=gen) * 2 + 1
    direction = torch.tensor([0.6, 0.8, 0.0, 0.0])
    det = Detector("resid_post.0", direction[None].double(), torch.tensor([0.5], dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64),
                   norm_mean=3.0, norm_std=1.5, score_mean={"projection": 1.0, "norm": 0.5},
                   score_std={"projection": 2.0, "norm": 0.25}, thresholds={"projection": 0.9, "norm": 0.4, "combined": 1.0},
                   fpr_target=0.05, skip=1)
    scores = det.score(acts)
    a = acts.numpy().astype(np.float64)[:, 1:]  # first token skipped
    proj = (np.abs(a @ direction.numpy() - 0.5) / 2.0).mean(1)
    norm = np.abs(((np.linalg.norm(a, axis=-1) - 3.0) / 1.5).mean(1))
    combined = np.maximum((proj - 1.0) / 2.0, (norm - 0.5) / 0.25)
    assert np.allclose(scores["projection"].numpy(), proj) and np.allclose(scores["norm"].numpy(), norm)
    assert np.allclose(scores["combined"].numpy(), combined)
    flags = det.flag(list(acts))  # a list of [pos, d] gives the same
    assert flags["projection"].tolist() == (proj > 0.9).tolist() and flags["norm"].tolist() == (norm > 0.4).tolist()
    with pytest.raises(InterpError, match="width"):
        det.score(torch.zeros(1, 5, 3))
    with pytest.raises(InterpError, match="none left"):
        det.score(torch.zeros(1, 1, 4))


def test_site_activations_read_each_prompt_at_its_own_length(tiny_llama):
    acts = site_activations(tiny_llama, CALIB[:4], "resid_post.1")
    for prompt, act in zip(CALIB[:4], acts):
        alone = tiny_llama.run(prompt, read=["resid_post.1"]).acts["resid_post.1"][0]
        assert act.shape == alone.shape and torch.allclose(act, alone, atol=1e-5)


def test_planted_vector_is_caught_and_clean_runs_pass(tiny_llama):
    vector = planted(tiny_llama, 0, 1.0)
    det = fit_detector(tiny_llama, CALIB, vector, layer=0, fpr=0.05)
    assert det.site == "resid_post.0"
    calib_flags = det.flag(site_activations(tiny_llama, CALIB, det.site))
    for name, flags in calib_flags.items():  # the threshold is the clean calibration scores' 95% quantile
        assert float(flags.float().mean()) <= 0.05 + 1 / len(CALIB), name
    rates = detection_rates(tiny_llama, det, HELD, vector, layer=0, coeff=-1.6)
    assert rates.n == len(HELD)
    for name in ("projection", "norm", "combined"):
        assert rates.tpr[name] >= 0.95 and rates.fpr[name] <= 0.2, (name, rates)
    zero = detection_rates(tiny_llama, det, HELD, vector, layer=0, coeff=0.0)
    assert zero.tpr == zero.fpr  # an unsteered "steered" run is flagged exactly like the clean one
    next_layer = fit_detector(tiny_llama, CALIB, vector, layer=0, offset=1)
    assert next_layer.site == "resid_post.1"
    assert detection_rates(tiny_llama, next_layer, HELD, vector, layer=0, coeff=-1.6).tpr["projection"] >= 0.9


def test_a_small_push_is_not_flagged_by_norm_alone_but_projection_sees_it(tiny_llama):
    vector = planted(tiny_llama, 1, 0.3)
    det = fit_detector(tiny_llama, CALIB, vector, layer=1)
    rates = detection_rates(tiny_llama, det, HELD, vector, layer=1, coeff=-1.0)
    assert rates.tpr["projection"] > rates.tpr["norm"]


def test_bad_input_is_refused(tiny_llama):
    v = torch.ones(tiny_llama.d_model)
    with pytest.raises(InterpError, match="fpr"):
        fit_detector(tiny_llama, CALIB, v, 0, fpr=1.5)
    with pytest.raises(InterpError, match="at least 2"):
        fit_detector(tiny_llama, CALIB[:1], v, 0)
    with pytest.raises(InterpError, match="is zero"):
        fit_detector(tiny_llama, CALIB, torch.zeros(tiny_llama.d_model), 0)
    with pytest.raises(InterpError, match="attack directions"):
        fit_detector(tiny_llama, CALIB, torch.ones(3), 0)


@pytest.mark.real_model
def test_smollm2_detector_flags_a_planted_push_on_chat_prompts(smollm2):
    prompts = [chat_prompt(smollm2, q, system="Be brief.") for q in HARMLESS[:12]]
    layer = 6
    vector = planted(smollm2, layer, 0.5)
    det = fit_detector(smollm2, prompts[:6], vector, layer)
    rates = detection_rates(smollm2, det, prompts[6:], vector, layer, coeff=-1.6)
    assert rates.tpr["projection"] == 1.0 and rates.fpr["projection"] <= 0.5
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in smollm2.hf.modules()) == 0  # hooks removed
