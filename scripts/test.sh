#!/usr/bin/env bash
# Installs the pack with its test extras into .venv (CPU torch) and runs the CPU test suite.
# ComfyUI integration tests skip here unless COMFYUI_PATH is set and this is the testbed's python:
# see README "ComfyUI integration tests".
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install --quiet --disable-pip-version-check torch==2.13.0
pip install --quiet --disable-pip-version-check -e ".[dev]"
python -m pytest -q tests "$@"
