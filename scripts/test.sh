#!/usr/bin/env bash
# Installs the pack with its test extras into .venv (CPU torch) and runs the CPU test suite.
# ComfyUI integration tests skip here unless COMFYUI_PATH is set and this is the testbed's python:
# see README "ComfyUI integration tests".
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh dev
python -m pytest -q tests "$@"
