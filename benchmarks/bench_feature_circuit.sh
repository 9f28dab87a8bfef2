#!/usr/bin/env bash
# A sparse feature circuit of IOI on SmolLM2-135M (4-bit GGUF weights dequantized), end to end on this CPU:
# three TopK SAEs (4096 latents, k 32, 200k tokens of the built-in corpus plus Python's stdlib docstrings) at
# resid_post.6, .12 and .18, then `interp features circuit` on 16 IOI prompts (8 nodes per dictionary, 32 candidates).
#     bash benchmarks/bench_feature_circuit.sh [OUT_DIR]     (default /tmp/feature-circuit-bench)
# Prints each SAE's quality line, the circuit's nodes and its faithfulness curve.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/feature-circuit-bench}
mkdir -p "$OUT"
.venv/bin/python - "$OUT/corpus.jsonl" <<'PY'
import json, sys
sys.path.insert(0, "benchmarks")
from bench_sae import stdlib_docstrings
from interp.circuits.corpus import load_corpus
texts = [row["text"] for row in load_corpus()] + stdlib_docstrings()
open(sys.argv[1], "w").write("\n".join(json.dumps({"text": t}) for t in texts))
PY
for L in 6 12 18; do
  .venv/bin/interp sae train --site resid_post.$L --latents 4096 --k 32 --tokens 200k --lr 1e-3 \
      --corpus "$OUT/corpus.jsonl" --out "$OUT/sae$L" --force 2>&1 | tr '\r' '\n' | grep -a "variance" || true
done
time .venv/bin/interp features circuit --dictionary "$OUT/sae6,$OUT/sae12,$OUT/sae18" --task ioi --n-prompts 16 \
    --nodes 8 --top-k 32 --backend torch --out "$OUT/circuit" --force
.venv/bin/python - "$OUT/circuit" <<'PY'
import json, sys
manifest = json.load(open(f"{sys.argv[1]}/manifest.json"))
for note in manifest["notes"]:
    print(f"## {note['title']}\n{note['text']}")
print("estimates vs exact:", json.dumps(manifest["estimates"]["faithfulness"]))
PY
