# Sourced by benchmarks/saelens_env.sh and benchmarks/bench_sae_vs_saelens.sh: the separate environment SAELens
# needs (SAELens 6 requires transformer-lens < 4, which cannot sit beside interp's TransformerLens 4).
# Sets ROOT, VENV (SAELENS_VENV, default /tmp/saelens-venv), MAIN_PY (interp's python) and OMP_NUM_THREADS,
# builds the venv if it lacks sae_lens (torch pinned first: an unpinned torch pulls GBs of CUDA wheels), and
# stops if torch there is not the pinned CPU build.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SAELENS_VENV:-/tmp/saelens-venv}"
MAIN_PY="${INTERP_PYTHON:-$ROOT/.venv/bin/python}"
TORCH_PIN="torch==2.13.0"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import sae_lens" 2>/dev/null; then
  echo "== building $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "$TORCH_PIN"
  "$VENV/bin/pip" install -q "sae-lens" "transformer-lens<4" "$TORCH_PIN"
fi
"$VENV/bin/python" - "$TORCH_PIN" <<'PY'
import sys, importlib.metadata as m, torch
want = sys.argv[1].split("==")[1]
assert torch.__version__.split("+")[0] == want, f"torch {torch.__version__} in the SAELens venv, expected {want}"
print(f"== SAELens env: sae-lens {m.version('sae-lens')}, transformer-lens {m.version('transformer-lens')}, torch {torch.__version__}")
PY
