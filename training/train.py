"""DisCa trainer entry point.

    accelerate launch training/train.py --config training/configs/<stage>.yaml [--key value ...] [--resume]
    accelerate launch training/train.py --config training/configs/meanflow.yaml --calibrate   # FD vs exact du/dt

The YAML's `stage` key picks the stage (predictor | meanflow | cfg_distill | flow_matching); flags override YAML keys. `--resume`
continues the run in `output_dir` from its newest checkpoint, to the same state an uninterrupted run would have; it
refuses a config that changes what defines the run (the model, data and objective: `training/loop.py` RUN_KEYS).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere

from training import loop  # noqa: E402
from training.config import load_config  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="stage YAML under training/configs/")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    parser.add_argument("--calibrate", action="store_true", help="meanflow only: compare FD and exact JVP du/dt and exit")
    args, overrides = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(args.config, overrides)
    if args.resume:
        loop.check_resume(config)  # before any model or data is loaded
    else:
        loop.run_record(config)  # read the model and data files as they are when the run starts
    # each stage (training.config.STAGES) is the module of its name, with train(config, resume)
    stage = importlib.import_module(f"training.{config.stage}")
    if args.calibrate:
        if not hasattr(stage, "calibrate"):
            raise SystemExit(f"--calibrate applies to the meanflow stage only, not {config.stage}")
        return stage.calibrate(config)
    return stage.train(config, resume=args.resume)


if __name__ == "__main__":
    report = main()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in report.items() if k.startswith("held_out") or k.endswith("file")}, indent=1))
