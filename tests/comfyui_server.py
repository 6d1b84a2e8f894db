"""A real ComfyUI server (subprocess, CPU) with this pack and the test stub loaders, for the workflow, HTTP and
browser tests.

`main.py --cpu --cache-none` runs from COMFYUI_PATH with the testbed's python (COMFYUI_PYTHON); this repo and
tests/comfyui_stubs are linked into a temporary custom_nodes folder. Every file the shipped workflows name exists:
the tiny models under the DiT and predictor file names; empty placeholders for the text encoders, VAEs and CLIP
vision (so that the frontend finds every model a workflow lists, and ComfyUI's loaders list them; the tests run
the stub loaders instead, which never open them); the start image of the image-to-video workflow. Everything the
server writes (log, output, input, user, temp) stays in the temporary folder.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from comfyui_env import COMFYUI_PATH, REPO_ROOT
from tiny_model_files import write_workflow_model_files

STUBS_DIR = Path(__file__).resolve().parent / "comfyui_stubs"
WORKFLOWS_DIR = REPO_ROOT / "workflows"
PACK_LINK, STUBS_LINK = "ComfyUI-DisCa", "disca_test_stubs"

# the model folders the shipped workflows load from (their nodes' properties.models directories)
MODEL_FOLDERS = ("diffusion_models", "disca", "text_encoders", "vae", "clip_vision")

SERVER_START_S = 120
RUN_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: Path):
        self.root = root
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "comfyui.log"
        self.output_dir = root / "output"
        self.input_dir = root / "input"
        self.process: subprocess.Popen | None = None
        self.log_file = None

    def prepare(self) -> None:
        custom_nodes = self.root / "custom_nodes"
        custom_nodes.mkdir()
        (custom_nodes / PACK_LINK).symlink_to(REPO_ROOT, target_is_directory=True)
        (custom_nodes / STUBS_LINK).symlink_to(STUBS_DIR, target_is_directory=True)
        write_workflow_model_files(self.root / "models")
        for folder in (self.output_dir, self.input_dir, self.root / "user", self.root / "temp"):
            folder.mkdir()
        self._write_shipped_workflow_files()
        folders = "".join(f"    {folder}: models/{folder}\n" for folder in MODEL_FOLDERS)
        (self.root / "extra_model_paths.yaml").write_text(
            "disca_workflow_test:\n"
            f"    base_path: {self.root}\n"
            "    custom_nodes: custom_nodes\n" + folders)

    def _write_shipped_workflow_files(self) -> None:
        from PIL import Image

        for path in sorted(WORKFLOWS_DIR.glob("*.json")):
            for node in json.loads(path.read_text())["nodes"]:
                for model in node.get("properties", {}).get("models", []):
                    placeholder = self.root / "models" / model["directory"] / model["name"]
                    if not placeholder.exists():
                        placeholder.parent.mkdir(parents=True, exist_ok=True)
                        placeholder.touch()
                if node["type"] == "LoadImage":
                    gradient = Image.linear_gradient("L").resize((96, 80)).convert("RGB")
                    gradient.save(self.input_dir / node["widgets_values"][0])

    def start(self) -> None:
        python = os.environ.get("COMFYUI_PYTHON", sys.executable)
        command = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                   "--disable-auto-launch", "--cache-none",  # every run executes every node, so each logs its summary
                   "--extra-model-paths-config", str(self.root / "extra_model_paths.yaml"),
                   "--output-directory", str(self.output_dir), "--input-directory", str(self.input_dir),
                   "--user-directory", str(self.root / "user"), "--temp-directory", str(self.root / "temp")]
        self.log_file = open(self.log_path, "w")
        self.process = subprocess.Popen(command, cwd=COMFYUI_PATH, stdout=self.log_file, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log()[-5000:]}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not answer within {SERVER_START_S} s:\n{self.log()[-5000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log_file is not None:
            self.log_file.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str):
        return json.loads(self.get_raw(path)[1])

    def get_raw(self, path: str) -> tuple[str, bytes]:
        """GET a file: its Content-Type and bytes."""
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return response.headers.get_content_type(), response.read()

    def frontend_version(self) -> tuple[int, ...]:
        """The frontend version this ComfyUI pins (requirements.txt), the one its testbed installs."""
        from workflow_api import parse_frontend_version

        return parse_frontend_version(self.get("/system_stats")["system"]["required_frontend_version"])

    def request(self, path: str, body: Any) -> tuple[int, Any]:
        """POST a JSON body; returns the HTTP status and the JSON answer (None if empty), also for an error status."""
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, answer = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, answer = error.code, error.read()
        return status, (json.loads(answer) if answer else None)

    def post(self, path: str, body: dict) -> dict:
        status, answer = self.request(path, body)
        if status != 200:
            raise AssertionError(f"POST {path} -> {status}: {answer}")
        return answer

    def queue(self, prompt: dict) -> str:
        """Queue a prompt that must pass validation; returns its prompt id."""
        queued = self.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
        assert not queued.get("node_errors"), queued["node_errors"]
        return queued["prompt_id"]

    def wait(self, prompt_id: str) -> dict:
        """The history entry of a queued prompt once it has finished, successfully or not."""
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
                return history[prompt_id]
            time.sleep(0.25)
        raise AssertionError(f"prompt {prompt_id} did not finish within {RUN_TIMEOUT_S} s:\n{self.log()[-6000:]}")

    def run(self, prompt: dict) -> tuple[dict, str]:
        """Queue a prompt and wait for it to succeed; returns its history entry and the log lines written meanwhile."""
        log_start = len(self.log())
        entry = self.wait(self.queue(prompt))
        if entry["status"]["status_str"] != "success":
            raise AssertionError(f"prompt failed: {entry['status']}\n{self.log()[log_start:][-6000:]}")
        return entry, self.log()[log_start:]
