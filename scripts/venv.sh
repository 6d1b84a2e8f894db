# Sourced by scripts/test.sh and scripts/demo.sh: creates .venv in the repo root, activates it and installs the pack
# with the extras named in $1 on the CPU build of torch (pinned: an unpinned torch pulls GBs of CUDA wheels).
python3 -m venv .venv
. .venv/bin/activate
pip install --quiet --disable-pip-version-check torch==2.13.0
pip install --quiet --disable-pip-version-check -e ".[$1]"
