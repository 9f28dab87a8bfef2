"""interp: mechanistic interpretability on one hook layer over TransformerLens and nnsight.

>>> import interp
>>> model = interp.load("smollm2-135m", backend="lens")                        # doctest: +SKIP
>>> out = model.run("When Mary and John went", read=["resid_pre.3"])           # doctest: +SKIP

Public surface: `load`, `Model`, the interventions (`Replace`, `Add`, `Ablate`, `SubspaceReplace`), `parse_site`,
`list_models`, prompt sets (`PromptSet`, `load_prompt_set`, `generate_ioi`), run folders
(`load_run`, `RunResult`). Nothing here knows a method exists: methods live in `patching`,
`steering` and `circuits`.
"""

import os

# interp never downloads: make every Hugging Face lookup local, so a missing model fails at once
# with our message instead of retrying a network that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from interp.errors import InterpError, ModelNotAvailableError  # noqa: E402
from interp.interventions import Ablate, Add, Intervention, Replace, SubspaceReplace  # noqa: E402
from interp.model import Model, RunOutput, load  # noqa: E402
from interp.sites import Site, parse_site  # noqa: E402

__all__ = [
    "Ablate", "Add", "Intervention", "InterpError", "Model", "ModelNotAvailableError", "Replace", "SubspaceReplace",
    "RunOutput", "Site", "list_models", "load", "load_prompt_set", "generate_ioi", "PromptSet",
    "load_run", "RunResult", "parse_site",
]


def __getattr__(name):  # lazy: keep `import interp` light
    if name == "list_models":
        from interp.models import list_models
        return list_models
    if name == "PromptSet":
        from interp.prompts import PromptSet
        return PromptSet
    if name == "load_prompt_set":
        from interp.tasks import load_prompt_set
        return load_prompt_set
    if name == "generate_ioi":
        from interp.ioi import generate_ioi
        return generate_ioi
    if name in ("load_run", "RunResult"):
        from interp import results
        return getattr(results, name)
    raise AttributeError(f"module 'interp' has no attribute '{name}'")
