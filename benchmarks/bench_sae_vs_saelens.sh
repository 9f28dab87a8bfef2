#!/usr/bin/env bash
# interp's TopK SAE trainer beside SAELens's own trainer, on the same activations and settings (issue 16, Training).
#
#   bash benchmarks/bench_sae_vs_saelens.sh [--tokens 61440] [--layer 15] [--corpus bench|builtin|FILE] ...
#
# SAELens 6 needs TransformerLens < 4 and cannot be imported in interp's venv, so the work is split in four steps
# (benchmarks/sae_compare/), sharing one activation file in WORK (default /tmp/sae_compare):
#   1. collect.py        (interp's venv)  SmolLM2-135M resid_post.L activations over the corpus, position 0 dropped:
#                                         the training contexts interp's trainer asks for, the row order it trains
#                                         in, its input scale, and held-out contexts with their activations;
#   2. train_interp.py   (interp's venv)  interp.circuits.sae_train.train on those activations;
#   3. train_saelens.py  (SAELens's venv) SAELens's TopKTrainingSAE + SAETrainer on the same rows, same order;
#   4. evaluate.py       (interp's venv)  both dictionaries loaded with interp.dictionary.load_dictionary and
#                                         evaluated identically (L0, explained variance, dead latents, next-token
#                                         loss spliced via model.attach + Ablate of the error term), one table.
# Both throughputs time training only, on activations already in memory, on the same thread count.
# Extra arguments go to collect.py (--tokens, --layer, --latents, --k, --lr, --batch-size, --eval-contexts, --corpus).
# The SAELens venv (SAELENS_VENV, default /tmp/saelens-venv) is built as benchmarks/saelens_env.sh builds it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/saelens_venv.sh"
WORK="${WORK:-/tmp/sae_compare}"
HERE="$ROOT/benchmarks/sae_compare"
mkdir -p "$WORK"
cd "$ROOT"
echo "== 1. activations (interp's venv) -> $WORK"
"$MAIN_PY" "$HERE/collect.py" "$WORK" "$@"
echo "== 2. interp's trainer (interp's venv)"
"$MAIN_PY" "$HERE/train_interp.py" "$WORK"
echo "== 3. SAELens's trainer ($VENV)"
"$VENV/bin/python" "$HERE/train_saelens.py" "$WORK"
echo "== 4. evaluation of both with interp (interp's venv)"
"$MAIN_PY" "$HERE/evaluate.py" "$WORK"
