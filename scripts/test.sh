#!/usr/bin/env bash
# The test suite. With no arguments: every test but the slow end-to-end ones (about 5 minutes on 2 cores).
# `bash scripts/test.sh -m slow` runs those (about 16 minutes); CI (.ci/run) runs both. Other arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# The report's browser test drives Debian's Chromium; install it where we can (CI: Debian, as
# root), else that one test skips and says why.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  bash scripts/setup_browser.sh
fi
if [ $# -eq 0 ]; then set -- -m "not slow"; fi
exec .venv/bin/python -m pytest -q "$@"
