#!/usr/bin/env bash
# The main job on embedded defaults (see README): prepare Chorus and print the baseline tables.
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec .venv/bin/searchrl quickstart "$@"
