#!/usr/bin/env bash
# The SAELens compatibility proof, both ways, in a separate environment.
#
# SAELens 6 needs TransformerLens < 4 and cannot be imported beside interp's TransformerLens 4.3, so
# this builds its own venv (SAELENS_VENV, default /tmp/saelens-venv; reused when present): pinned CPU
# torch first (an unpinned one pulls GBs of CUDA wheels), then sae-lens and transformer-lens<4 with
# torch held at the same pin. Then:
#   1. (REMAKE_FIXTURE=1 only) SAELens writes tests/fixtures/saelens/<name>/ again (make_fixture.py);
#   2. interp loads every SAELens-written fixture and matches SAELens's latents and outputs (pytest);
#   3. interp writes fresh dictionaries with save_dictionary (write_interp_dicts.py, interp's venv),
#      and SAELens loads them with SAE.load_from_disk and matches interp's latents and outputs
#      (check_interp_written.py, SAELens's venv).
# Usage, from anywhere:  bash benchmarks/saelens_env.sh      (about 2 minutes the first time)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/saelens_venv.sh"
FIX="$ROOT/tests/fixtures/saelens"

if [ "${REMAKE_FIXTURE:-0}" = 1 ]; then
  echo "== 1. SAELens writes the fixture"
  (cd "$FIX" && "$VENV/bin/python" make_fixture.py)
fi

echo "== 2. interp reads what SAELens wrote"
(cd "$ROOT" && "$MAIN_PY" -m pytest -q -p no:cacheprovider tests/interp/test_dictionary.py -k saelens_fixture)

echo "== 3. SAELens reads what interp wrote"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
(cd "$ROOT" && "$MAIN_PY" "$FIX/write_interp_dicts.py" "$WORK/interp_written")
"$VENV/bin/python" "$FIX/check_interp_written.py" "$WORK/interp_written" 1e-6
echo "== SAELens compatibility: both ways agree"
