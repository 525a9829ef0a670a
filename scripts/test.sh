#!/usr/bin/env bash
# The test suite, slow end-to-end tests included (pass -m "not slow" to skip those).
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec .venv/bin/python -m pytest -q "$@"
