# Sourced by quickstart.sh and test.sh: create or reuse .venv inside the repo and install
# searchrl into it, pinned by constraints.txt. Idempotent: re-installs only when
# pyproject.toml or constraints.txt changed since the last successful install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "searchrl needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.searchrl-installed"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing searchrl into .venv (torch pinned by constraints.txt)"
  # (the grep hides this machine's pip.conf warnings about absent local index folders; pip's own
  # exit status still decides, through pipefail)
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test,serve]" 2>&1 \
    | { grep -v "^WARNING: Location 'file://" || true; }
  echo "$want" > "$stamp"
fi
# Upstream data: use the local mirror when there is one (CI and these machines), else download.
if [ -z "${SEARCHRL_DATA_MIRROR:-}" ] && [ -d "$ROOT/../shared/data" ]; then
  export SEARCHRL_DATA_MIRROR="$ROOT/../shared/data"
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
