#!/usr/bin/env bash
# Installs the pack with its demo extras into .venv (CPU torch) and runs the DisCa-mini demo on the embedded model:
# one prompt without and with DisCa, a side-by-side GIF (disca_demo.gif), the measured speedup and the classifier's
# verdict. Extra arguments go to the demo (e.g. --prompt "a blue square moving up, fast, over a dotted background").
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh demo
python -m benchmarks.mini.demo "$@"
