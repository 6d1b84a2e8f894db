"""Entries of `GET /object_info` captured from the two ComfyUI testbeds, so that the CPU tests convert workflows with
real node definitions: tests/data/object_info_comfyui_<version>.json holds the ComfyUI version, the frontend it
pins, and the definitions of every node type the shipped workflows use (plus KSampler, for the seed rules).

test_comfyui_workflows.py checks on each testbed that the fixture still matches the server; when the DisCa nodes
change, it writes the server's fresh selection and names the file to copy it over.
"""

from __future__ import annotations

import json
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
WORKFLOWS_DIR = Path(__file__).resolve().parents[1] / "workflows"
FRONTEND_ONLY_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
EXTRA_NODE_TYPES = ("KSampler",)
COMFYUI_VERSIONS = ("0.8.0", "0.33.0")


def fixture_node_types() -> list[str]:
    types = set(EXTRA_NODE_TYPES)
    for path in WORKFLOWS_DIR.glob("*.json"):
        types |= {node["type"] for node in json.loads(path.read_text())["nodes"]}
    return sorted(types - FRONTEND_ONLY_TYPES)


def fixture_path(comfyui_version: str) -> Path:
    return DATA_DIR / f"object_info_comfyui_{comfyui_version}.json"


def build_fixture(comfyui_version: str, frontend_version: str, object_info: dict) -> dict:
    return {"comfyui_version": comfyui_version, "frontend_version": frontend_version,
            "object_info": {node_type: object_info[node_type] for node_type in fixture_node_types()}}


def load_fixture(comfyui_version: str) -> dict:
    return json.loads(fixture_path(comfyui_version).read_text())


def write_fixture(path: Path, fixture: dict) -> None:
    # key order kept: a DynamicCombo option's inputs have no input_order, the frontend takes them in listed order
    path.write_text(json.dumps(fixture, indent=1) + "\n")
