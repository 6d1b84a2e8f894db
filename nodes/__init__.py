"""ComfyUI nodes of the DisCa pack: thin V3 adapters over `disca`."""

import logging
import os

import folder_paths
from comfy_api.latest import ComfyExtension, io

from .loaders import PREDICTOR_FOLDER, DisCaLoadDistilledModel, DisCaLoadPredictor
from .sampling import DisCaApply, DisCaSigmas


def _register_predictor_folder() -> None:
    # created, so that users find where predictors go; extra_model_paths.yaml is read before custom nodes load and
    # may have registered the key already
    path = os.path.join(folder_paths.models_dir, PREDICTOR_FOLDER)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:  # a read-only models folder must not keep the pack from loading
        logging.getLogger("disca").warning("DisCa: could not create %s (%s); put predictors there or in "
                                           "extra_model_paths.yaml's 'disca' folder", path, error)
    if PREDICTOR_FOLDER in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(PREDICTOR_FOLDER, path)
    else:
        folder_paths.folder_names_and_paths[PREDICTOR_FOLDER] = ([path], {".safetensors"})


_register_predictor_folder()


class DisCaExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [DisCaLoadDistilledModel, DisCaLoadPredictor, DisCaApply, DisCaSigmas]


async def comfy_entrypoint() -> DisCaExtension:
    return DisCaExtension()
