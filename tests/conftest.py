import pytest


@pytest.fixture(scope="session")
def comfyui(tmp_path_factory):
    """ComfyUI in-process with the pack loaded and tiny models in its model folders (testbed only)."""
    from comfyui_env import ComfyUI, comfyui_skip_reason

    reason = comfyui_skip_reason()
    if reason:
        pytest.skip(reason)
    from tiny_model_files import write_tiny_model_files

    env = ComfyUI(tmp_path_factory.mktemp("comfyui_models"))
    write_tiny_model_files(env.models_dir)
    return env


@pytest.fixture(scope="session")
def comfyui_server(tmp_path_factory):
    """One real ComfyUI server (tests/comfyui_server.py) for the workflow, HTTP and browser tests (testbed only)."""
    from comfyui_env import comfyui_skip_reason

    reason = comfyui_skip_reason()
    if reason:
        pytest.skip(reason)
    from comfyui_server import Server

    server = Server(tmp_path_factory.mktemp("comfyui_server"))
    server.prepare()
    try:
        server.start()
        yield server
    finally:
        server.stop()
