#!/usr/bin/env bash
# Installs Debian's Chromium and chromedriver for the browser test of report.html
# (tests/test_report.py::test_report_in_headless_chromium). Called by test.sh when either is
# missing. Idempotent and quiet; it never fails its caller: when it cannot install (no apt-get,
# not root, no network to the apt mirror), it says so and the browser test skips with a reason.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[setup] no apt-get: Chromium not installed; the report browser test will skip" >&2; exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "[setup] not root: Chromium not installed (sudo apt-get install chromium chromium-driver);" \
       "the report browser test will skip" >&2; exit 0
fi
echo "[setup] installing chromium + chromium-driver (apt) for the report browser test"
log="$(mktemp)"
export DEBIAN_FRONTEND=noninteractive
# (full apt output goes to a log shown only on failure: a few hundred lines of "Setting up ...")
if timeout 900 apt-get update -qq >"$log" 2>&1 \
   && timeout 900 apt-get install -y -qq chromium chromium-driver >>"$log" 2>&1; then
  rm -f "$log"
else
  tail -n 20 "$log" >&2
  echo "[setup] could not install Chromium (log: $log); the report browser test will skip" >&2
fi
exit 0
