"""The run folders the app's tests browse: `interp` arguments per folder, and the unreadable folders."""

from pathlib import Path

TINY = ["--model", "tiny-llama"]
SAELENS = Path(__file__).resolve().parents[1] / "fixtures" / "saelens"  # dictionaries SAELens wrote for tiny-llama
COMMANDS = {  # folder -> arguments of `interp`
    "patch": ["patch", *TINY, "--n-prompts", "2", "--components", "resid_pre,head_out,mlp_out",
              "--method", "activation,atp,relp,ig", "--ig-steps", "2"],
    "circuit_a": ["circuit", "build", "--run", "{runs}/patch", "--top-k", "4", "--components", "head_out", "--edges", *TINY],
    "circuit_b": ["circuit", "build", "--run", "{runs}/patch", "--top-k", "3"],
    "feature_circuit": ["features", "circuit", *TINY, "--dictionary", f"{SAELENS / 'jumprelu'},{SAELENS / 'topk'}",
                        "--n-prompts", "3", "--nodes", "3", "--top-k", "4"],
    "discover": ["circuit", "discover", *TINY, "--n-prompts", "3", "--edges", "20", "--curve", "--fractions", "0.1,0.5,1"],
    "overlap": ["circuit", "overlap", "{runs}/circuit_a", "{runs}/circuit_b"],
    "faithfulness": ["circuit", "faithfulness", "{runs}/circuit_a", *TINY, "--n-prompts", "2"],
    "subspace": ["subspace", *TINY, "--site", "mlp_act.1", "--method", "das", "--n-prompts", "8", "--epochs", "2"],
    "heads": ["heads", "detect", *TINY, "--n-prompts", "3"],
    "retrieval": ["heads", "retrieval", *TINY, "--lengths", "160", "--depths", "0,100", "--ks", "1", "--max-new-tokens", "3"],
    "neurons": ["neurons", "relation", *TINY, "--relations", "capital_of,plural_of", "--no-keep-correct", "--k", "5",
                "--n-identification", "6", "--sweep", "plural_of", "--ks", "2,5"],
    "voids": ["voids", *TINY, "-p", "Hello there", "-p", "The capital of France is", "--max-new-tokens", "3", "--no-mc"],
    "steer_build": ["steer", "build", *TINY, "--task", "ioi", "--n", "6", "--no-only-correct", "--layers", "0,1"],
    "steer_eval": ["steer", "eval", *TINY, "--vectors", "{runs}/steer_build/vectors", "--layers", "1", "--task", "ioi", "--n", "4",
                   "--coefficients", "-1,0,2"],
    "east": ["steer", "east", *TINY, "--episodes", "2", "--steps", "2", "--k", "2", "--betas", "0,4", "--temperatures", "1,2"],
    "latents": ["sae", "latents", *TINY, "--dictionary", str(SAELENS / "topk"), "--tokens", "2k", "--context", "32",
                "--top", "4", "--window", "3"],
    "attack": ["steer", "attack", *TINY, "--n", "8", "--pair-tokens", "3", "--search", "0,1", "--layer", "1"],
}
BROKEN = {"damaged": "is not valid JSON", "newer": "newer interp", "stray": "has no manifest.json",
          "badscores": "cannot be read as safetensors"}
