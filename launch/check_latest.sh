#!/usr/bin/env bash
# Drift check: does remix-ds still pass with the newest package versions setup.py allows?
#
#   launch/check_latest.sh                # throwaway venv, newest allowed versions, the fast suite
#   launch/check_latest.sh --write-lock   # ... and, if it passed, write those versions to constraints-cpu.txt
#
# Builds a venv in a temp folder (removed at the end) without the lock: torch stays the CPU wheel
# ($TORCH_SPEC, default torch==2.13.0, as the CPU path pins it), everything else resolves anew. It
# prints the packages whose newest version differs from the lock, runs the fast suite
# (`pytest -m "not slow"`, about 8 minutes on 2 cores) and exits with pytest's status. After
# --write-lock, run the full suite and record the demo again (docs/demo_results.json holds the lock's hash).
set -euo pipefail
cd "$(dirname "$0")/.."
write_lock=0
[[ "${1:-}" == "--write-lock" ]] && write_lock=1
venv=$(mktemp -d "${TMPDIR:-/tmp}/remix-ds-latest.XXXXXX")
trap 'rm -rf "$venv"' EXIT
python3.11 -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
pip install -q "${TORCH_SPEC:-torch==2.13.0}"
pip install -q -e '.[dev]'
pip freeze --exclude-editable --all | grep -v '^pip==' | sed 's/^torch==\([0-9.]*\)+cpu$/torch==\1/' | LC_ALL=C sort -f > "$venv/latest.txt"
echo "== newest allowed versions that differ from constraints-cpu.txt (lock < > newest):"
diff <(grep -v '^#' constraints-cpu.txt | LC_ALL=C sort -f) "$venv/latest.txt" || true
echo "== the fast suite with the newest versions"
status=0
OMP_NUM_THREADS=1 python -m pytest -q -m "not slow" || status=$?
if [[ $status -eq 0 && $write_lock -eq 1 ]]; then
  { grep '^#' constraints-cpu.txt; cat "$venv/latest.txt"; } > constraints-cpu.txt.new
  mv constraints-cpu.txt.new constraints-cpu.txt
  echo "wrote constraints-cpu.txt ($(grep -vc '^#' constraints-cpu.txt) pins)"
fi
echo "check_latest: fast suite exit $status"
exit $status
