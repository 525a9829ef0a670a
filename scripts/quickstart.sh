#!/usr/bin/env bash
# The main job on embedded defaults (see README): every stage on Chorus, ending in runs/quickstart/report.html.
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# It also rewrites the results pages docs/results/{relevance,retrieval,timing}.md from this run.
exec .venv/bin/searchrl pipeline --config quickstart --dataset chorus --out runs/quickstart \
  --set report.results_dir=docs/results "$@"
