#!/usr/bin/env bash
# The test suite, slow end-to-end tests included (pass -m "not slow" to skip those).
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# The report's browser test drives Debian's Chromium; install it where we can (CI: Debian, as
# root), else that one test skips and says why.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  bash scripts/setup_browser.sh
fi
exec .venv/bin/python -m pytest -q "$@"
