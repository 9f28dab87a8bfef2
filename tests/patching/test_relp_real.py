"""RelP on the real default model: on SmolLM2 IOI it tracks activation patching better than AtP does."""

import pytest
import torch

from interp.ioi import generate_ioi
from interp.patching.faithfulness import faithfulness
from interp.patching.run import activation_patching

pytestmark = pytest.mark.real_model


def test_relp_beats_atp_on_residual_and_mlp_outputs(smollm2):
    prompts = generate_ioi(smollm2.tokenizer, 4, seed=0)
    run = activation_patching(smollm2, prompts, ["resid_pre", "mlp_out"], methods=["activation", "atp", "relp"])
    base = run.manifest["baselines"]["corrupt"]["mean"]
    for comp in ("resid_pre", "mlp_out"):
        truth = run.scores[f"activation/{comp}"]
        atp, relp = (faithfulness(truth, run.scores[f"{m}/{comp}"], base) for m in ("atp", "relp"))
        assert run.manifest["faithfulness"]["relp"][comp] == relp
        assert relp["pearson"] >= 0.8 and relp["pearson"] > atp["pearson"] + 0.1, (comp, atp, relp)
    # the rules never touch the forward pass: both estimators start from the same corrupt metric
    cells = run.scores["relp/resid_pre/per_prompt"][:, :, 0]  # position 0: nothing to patch
    assert torch.allclose(cells, run.scores["atp/resid_pre/per_prompt"][:, :, 0])
