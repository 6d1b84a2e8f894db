#!/usr/bin/env bash
# Installs the pack with its demo extras into .venv (CPU torch) and runs the DisCa-mini demo on the embedded model:
# one prompt without and with DisCa, a side-by-side GIF (disca_demo.gif), the measured speedup and the classifier's
# verdict. Extra arguments go to the demo (e.g. --prompt "a blue square moving up, fast, over a dotted background").
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install --quiet --disable-pip-version-check torch==2.13.0
pip install --quiet --disable-pip-version-check -e ".[demo]"
python -m benchmarks.mini.demo "$@"
