"""Weight formats: the official DisCa predictor layouts, key maps between namings, metadata.

Three namings meet here (DESIGN.md §2):
- Tencent: the original HunyuanVideo code and the official DisCa files (`double_blocks.N.img_attn_qkv`,
  `single_blocks.N.linear1`, `mm_single_blocks.N.q_norm.weight`, ...). Released files sometimes come in a
  tensor-parallel variant (`img_attn_q/k/v`, `linear1_q/k/v/mlp`, `linear2.fc`) that the official loader
  fuses; `normalize_tencent_layout` does the same so both variants load.
- ComfyUI: Flux-style module names (`img_attn.qkv`, `norm.query_norm.scale` or `.weight`, `modulation.lin`).
- diffusers: see `disca.hosts.diffusers_keys`.

Everything here is plain torch + safetensors; nothing imports a host.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass

import torch

ARCH_HV10 = "hunyuan_video"
ARCH_HV15 = "hunyuan_video_1_5"
ARCHES = (ARCH_HV10, ARCH_HV15)

FORMAT_VERSION = "1"
META_FORMAT = "disca.format"
META_KIND = "disca.kind"
META_ARCH = "disca.arch"
META_BASE_FINGERPRINT = "disca.base_fingerprint"
META_STEP_LISTS = "disca.step_lists"
META_INTERVAL_RANGE = "disca.interval_range"
META_RESOLUTION = "disca.resolution"
META_R = "disca.R"
META_TRAINING = "disca.training"

# The official files' top-level names: HunyuanVideo-1.0 T2V predictors are single-stream, 1.5 I2V double-stream.
SINGLE_STREAM_BLOCKS = "mm_single_blocks"
DOUBLE_STREAM_BLOCKS = "double_blocks"
FUSION_SINGLE = "fusion_mlp"
FUSION_IMG = "fusion_mlp_img"
FUSION_TXT = "fusion_mlp_txt"

# Prefixes that training frameworks put in front of a module's keys; the official loader strips them too.
_WRAPPER_PREFIXES = ("module.predictor.", "predictor.", "module.", "model.diffusion_model.")


class DisCaFormatError(ValueError):
    """A weight file does not have the layout or shapes that were expected; the message names the file."""


@dataclass(frozen=True)
class PredictorSpec:
    """What a predictor file holds, inferred from its keys and shapes (the official files carry no metadata)."""

    arch: str  # ARCH_HV10 (single-stream blocks) or ARCH_HV15 (double-stream blocks)
    hidden_size: int
    num_heads: int
    depth: int
    mlp_hidden_dim: int

    @property
    def block_type(self) -> str:
        return "single" if self.arch == ARCH_HV10 else "double"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


# --------------------------------------------------------------------------------------------------
# Files


def load_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read tensors and metadata from a safetensors file, with errors that name the file. Never unpickles."""
    from safetensors import SafetensorError, safe_open

    if not os.path.isfile(path):
        raise DisCaFormatError(f"{path}: file not found")
    with open(path, "rb") as f:
        head = f.read(9)
    # a safetensors file is an 8-byte little-endian header length, then the JSON header itself
    if len(head) < 9 or head[8:9] != b"{":
        kind = "a pickle" if head[:1] == b"\x80" else "a zip (torch.save)" if head[:4] == b"PK\x03\x04" else "unknown data"
        raise DisCaFormatError(
            f"{path}: not a safetensors file (starts like {kind}); DisCa loads only .safetensors weights, never "
            "pickles (.pt/.ckpt/.bin). Download the .safetensors release or convert the file."
        )
    header_len, size = int.from_bytes(head[:8], "little"), os.path.getsize(path)
    if header_len > size - 8:
        raise DisCaFormatError(f"{path}: truncated (its header needs {header_len} bytes, the file has {size}); "
                               "re-download it")
    try:
        tensors = {}
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError) as error:
        raise DisCaFormatError(f"{path}: unreadable safetensors file ({error}); it may be truncated, re-download it") from error
    return tensors, metadata


def save_safetensors(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write atomically (temp file + rename), so an interrupted save never leaves a corrupt file behind."""
    from safetensors.torch import save_file

    bad = {k: type(v).__name__ for k, v in metadata.items() if not isinstance(v, str)}
    if bad:
        raise TypeError(f"safetensors metadata values must be strings; got {bad}")
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# Tencent layout variants


def strip_wrapper_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a prefix that every key shares (`module.`, `predictor.`, ...), as the official loader does."""
    for prefix in _WRAPPER_PREFIXES:
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


_SPLIT_GROUPS = (
    # (pattern of a split key, fused name, part suffixes in concatenation order); the last group is the tensor's
    # name in its layer: weight, bias, or what a quantized file adds per layer (scale_weight, comfy_quant, ...)
    (re.compile(r"^(.*\.)(img_attn|txt_attn)_([qkv])\.(\w+)$"), "{0}_qkv", ("q", "k", "v")),
    (re.compile(r"^(.*\.)linear1_(q|k|v|mlp)\.(\w+)$"), "linear1", ("q", "k", "v", "mlp")),
)
_ROW_TENSORS = ("weight", "bias")  # one row per output feature: fusing stacks them


def normalize_tencent_layout(state_dict: dict[str, torch.Tensor], source: str = "model") -> dict[str, torch.Tensor]:
    """Fuse the split variants of the Tencent layout into the merged one.

    `*_attn_q/k/v` -> `*_attn_qkv` (HunyuanVideo-1.5 blocks store them split; ComfyUI wants them fused),
    `linear1_q/k/v/mlp` -> `linear1` and `linear2.fc` -> `linear2` (tensor-parallel exports).
    Rows are stacked in q, k, v(, mlp) order, as the official loader does. Incomplete groups are errors.

    A quantized file's per-layer tensors (the scale of ComfyUI's scaled-fp8 files, `.scale_weight`) apply to a
    whole layer: the fused layer can keep one only when every part has the same. Parts with their own scales are
    refused: stacking their rows under any one scale would change the weights, silently.
    """
    out: dict[str, torch.Tensor] = {}
    groups: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        key = key.replace(".linear2.fc.", ".linear2.")
        m = _SPLIT_GROUPS[0][0].match(key)
        if m:
            prefix, stream, part, tensor = m.groups()
            groups.setdefault((prefix, f"{stream}_qkv", tensor), {})[part] = value
            continue
        m = _SPLIT_GROUPS[1][0].match(key)
        if m:
            prefix, part, tensor = m.groups()
            groups.setdefault((prefix, "linear1", tensor), {})[part] = value
            continue
        out[key] = value
    for (prefix, fused, tensor), parts in groups.items():
        order = ("q", "k", "v", "mlp") if fused == "linear1" else ("q", "k", "v")
        missing = [p for p in order if p not in parts]
        if missing:
            raise DisCaFormatError(f"split weights for {prefix}{fused}.{tensor} lack parts {missing}")
        if tensor in _ROW_TENSORS:
            out[f"{prefix}{fused}.{tensor}"] = torch.cat([parts[p] for p in order], dim=0)
            continue
        first = parts[order[0]]
        if not all(parts[p].shape == first.shape and torch.equal(parts[p], first) for p in order[1:]):
            stem = f"{prefix}linear1_" if fused == "linear1" else f"{prefix}{fused.removesuffix('qkv')}"
            split_names = ", ".join(stem + p for p in order)
            raise DisCaFormatError(
                f"{source}: {split_names} are stored split, each with its own scale (.{tensor}); fusing them into one "
                f"{prefix}{fused} layer under one scale would change the weights. Load a fused-layout file instead "
                "(e.g. the Comfy-Org repackage, whose q/k/v are quantized together) or an unscaled (bf16/fp16) file, "
                "with weight_dtype fp8_e4m3fn to keep the weights in fp8."
            )
        out[f"{prefix}{fused}.{tensor}"] = first  # one value for the whole layer: fusing is exact
    return out


_FUSED_DOUBLE_BLOCK_QKV = re.compile(rf"^({DOUBLE_STREAM_BLOCKS}\.\d+\.)(img_attn|txt_attn)_qkv\.(weight|bias)$")


def official_tencent_layout(state_dict: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """The merged layout -> the one the official code loads, for files we write.

    HunyuanVideo-1.5's double-stream blocks (the DiT's and the DisCa predictor's) define q, k and v as three linears
    (`img_attn_q/k/v`, `txt_attn_q/k/v`). The official DisCa code loads a predictor non-strictly, so a fused
    `*_attn_qkv` would be skipped without an error and q/k/v left at their initialisation; its 1.5 DiT loader refuses
    the keys it does not define. So 1.5 files are written split, rows q, k, v in that order (the inverse of
    `normalize_tencent_layout`, which fuses them again for ComfyUI and our loaders); 1.0 defines them fused.
    """
    if arch != ARCH_HV15:
        return dict(state_dict)
    out = {}
    for key, value in state_dict.items():
        m = _FUSED_DOUBLE_BLOCK_QKV.match(key)
        if m is None:
            out[key] = value
            continue
        prefix, stream, tensor = m.groups()
        # clones: safetensors refuses tensors that share storage
        out.update({f"{prefix}{stream}_{part}.{tensor}": rows.clone() for part, rows in zip("qkv", value.chunk(3))})
    return out


# --------------------------------------------------------------------------------------------------
# Predictor layout


def _block_indices(state_dict: dict[str, torch.Tensor], prefix: str) -> list[int]:
    found = {int(k[len(prefix):].split(".", 1)[0]) for k in state_dict if k.startswith(prefix)}
    return sorted(found)


def infer_predictor_spec(state_dict: dict[str, torch.Tensor], source: str = "predictor") -> PredictorSpec:
    """Infer arch, width, heads and depth of a predictor in the (normalized) official layout."""
    if f"{FUSION_SINGLE}.0.weight" in state_dict:
        arch, prefix, fusion = ARCH_HV10, f"{SINGLE_STREAM_BLOCKS}.", FUSION_SINGLE
        norm_key, mlp_key = "q_norm.weight", None
    elif f"{FUSION_IMG}.0.weight" in state_dict and f"{FUSION_TXT}.0.weight" in state_dict:
        arch, prefix, fusion = ARCH_HV15, f"{DOUBLE_STREAM_BLOCKS}.", FUSION_IMG
        norm_key, mlp_key = "img_attn_q_norm.weight", "img_mlp.fc1.weight"
    else:
        sample = sorted(state_dict)[:5]
        raise DisCaFormatError(
            f"{source}: not a DisCa predictor: expected '{FUSION_SINGLE}.0.weight' (HunyuanVideo-1.0) or "
            f"'{FUSION_IMG}.0.weight' + '{FUSION_TXT}.0.weight' (HunyuanVideo-1.5); first keys are {sample}"
        )
    fusion_weight = state_dict[f"{fusion}.0.weight"]
    hidden = fusion_weight.shape[0]
    if fusion_weight.shape != (hidden, 2 * hidden):
        raise DisCaFormatError(f"{source}: {fusion}.0.weight has shape {tuple(fusion_weight.shape)}, expected (D, 2D)")
    indices = _block_indices(state_dict, prefix)
    if not indices or indices != list(range(len(indices))):
        raise DisCaFormatError(f"{source}: predictor blocks '{prefix}N' must be numbered 0..n-1; found {indices}")
    first = f"{prefix}0."
    if f"{first}{norm_key}" not in state_dict:
        raise DisCaFormatError(f"{source}: missing {first}{norm_key}")
    head_dim = state_dict[f"{first}{norm_key}"].shape[0]
    if hidden % head_dim:
        raise DisCaFormatError(f"{source}: head dim {head_dim} does not divide hidden size {hidden}")
    if arch == ARCH_HV10:
        mlp_hidden = state_dict[f"{first}linear1.weight"].shape[0] - 3 * hidden
    else:
        mlp_hidden = state_dict[f"{first}{mlp_key}"].shape[0]
    return PredictorSpec(arch=arch, hidden_size=hidden, num_heads=hidden // head_dim, depth=len(indices),
                         mlp_hidden_dim=mlp_hidden)


def expected_predictor_keys(spec: PredictorSpec) -> set[str]:
    """The exact key set of a predictor in the merged official layout."""
    keys = set()
    fusions = (FUSION_SINGLE,) if spec.arch == ARCH_HV10 else (FUSION_IMG, FUSION_TXT)
    for fusion in fusions:
        keys |= {f"{fusion}.{i}.{t}" for i in (0, 2) for t in ("weight", "bias")}
    if spec.arch == ARCH_HV10:
        block = ["linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias", "q_norm.weight",
                 "k_norm.weight", "modulation.linear.weight", "modulation.linear.bias"]
        prefix = SINGLE_STREAM_BLOCKS
    else:
        block = [f"{s}_{name}" for s in ("img", "txt") for name in (
            "mod.linear.weight", "mod.linear.bias", "attn_qkv.weight", "attn_qkv.bias", "attn_q_norm.weight",
            "attn_k_norm.weight", "attn_proj.weight", "attn_proj.bias", "mlp.fc1.weight", "mlp.fc1.bias",
            "mlp.fc2.weight", "mlp.fc2.bias")]
        prefix = DOUBLE_STREAM_BLOCKS
    keys |= {f"{prefix}.{i}.{name}" for i in range(spec.depth) for name in block}
    return keys


def read_predictor_state_dict(state_dict: dict[str, torch.Tensor], source: str) -> tuple[PredictorSpec, dict]:
    """Normalize an official/our predictor state dict and check it strictly: every key expected, none extra."""
    state_dict = normalize_tencent_layout(strip_wrapper_prefix(state_dict))
    spec = infer_predictor_spec(state_dict, source)
    expected = expected_predictor_keys(spec)
    missing, unexpected = sorted(expected - state_dict.keys()), sorted(state_dict.keys() - expected)
    if missing or unexpected:
        raise DisCaFormatError(
            f"{source}: predictor keys do not match the official {spec.arch} layout "
            f"(missing {missing[:6]}{'...' if len(missing) > 6 else ''}, "
            f"unexpected {unexpected[:6]}{'...' if len(unexpected) > 6 else ''}); the file is damaged or not a DisCa predictor"
        )
    return spec, state_dict


# --------------------------------------------------------------------------------------------------
# Tencent -> ComfyUI block names (the same renames ComfyUI applies to DiT checkpoints on load)

_TENCENT_TO_COMFY_BLOCK = (
    ("_mod.linear.", "_mod.lin."),
    ("_attn_qkv.", "_attn.qkv."),
    ("_attn_q_norm.weight", "_attn.norm.query_norm.scale"),
    ("_attn_k_norm.weight", "_attn.norm.key_norm.scale"),
    ("_attn_proj.", "_attn.proj."),
    ("mlp.fc1.", "mlp.0."),
    ("mlp.fc2.", "mlp.2."),
    ("q_norm.weight", "norm.query_norm.scale"),
    ("k_norm.weight", "norm.key_norm.scale"),
    ("modulation.linear.", "modulation.lin."),
)
# ComfyUI's QK norms name their parameter `scale` up to 0.13 (its own RMSNorm) and `weight` from 0.14 on (torch's
# RMSNorm through `operations.RMSNorm`): the inverse map reads both.
_COMFY_TO_TENCENT_BLOCK = tuple((new, old) for old, new in _TENCENT_TO_COMFY_BLOCK) + tuple(
    (new.removesuffix("scale") + "weight", old) for old, new in _TENCENT_TO_COMFY_BLOCK if new.endswith(".scale"))
_NORM_PARAMETER_NAMES = ("scale", "weight")


_BLOCK_KEY = re.compile(rf"^((?:{SINGLE_STREAM_BLOCKS}|{DOUBLE_STREAM_BLOCKS})\.\d+\.)(.*)$")


def _rename_block_key(key: str, rules) -> str:
    """Apply the first matching rule to the part of a block key after `<blocks>.N.`; other keys pass."""
    m = _BLOCK_KEY.match(key)
    if m is None:
        return key
    prefix, rest = m.groups()
    for old, new in rules:
        if old in rest:
            return prefix + rest.replace(old, new)
    return key


def tencent_to_comfy_predictor(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official predictor keys -> the keys of `disca.predictor` modules built from ComfyUI blocks (norm parameters
    named `scale`; `match_norm_parameter_names` adapts them to the blocks a given ComfyUI builds)."""
    return {_rename_block_key(k, _TENCENT_TO_COMFY_BLOCK): v for k, v in state_dict.items()}


def comfy_to_tencent_predictor(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {_rename_block_key(k, _COMFY_TO_TENCENT_BLOCK): v for k, v in state_dict.items()}


def match_norm_parameter_names(state_dict: dict[str, torch.Tensor], module_keys) -> dict[str, torch.Tensor]:
    """Rename norm parameters (`….scale` <-> `….weight`) to the names the built module has; other keys unchanged,
    so a strict load still reports anything that does not fit."""
    module_keys = set(module_keys)

    def fitted(key: str) -> str:
        stem, _, name = key.rpartition(".")
        if key in module_keys or ".norm." not in key or name not in _NORM_PARAMETER_NAMES:
            return key
        return next((f"{stem}.{n}" for n in _NORM_PARAMETER_NAMES if f"{stem}.{n}" in module_keys), key)

    return {fitted(k): v for k, v in state_dict.items()}


# --------------------------------------------------------------------------------------------------
# Distilled DiT (Tencent layout)


@dataclass(frozen=True)
class DiTSpec:
    """What a Tencent-layout HunyuanVideo DiT checkpoint is, read from its keys (as ComfyUI detects it)."""

    arch: str
    hidden_size: int
    num_heads: int
    double_blocks: int
    single_blocks: int
    meanflow: bool  # has time_r_in: embeds r = the next sigma
    guidance_distilled: bool  # has guidance_in: CFG folded into an embedded guidance scale

    def describe(self) -> str:
        kinds = [name for name, on in (("MeanFlow", self.meanflow), ("guidance-distilled", self.guidance_distilled)) if on]
        return (f"{self.arch} hidden {self.hidden_size} ({self.num_heads} heads), {self.double_blocks} double + "
                f"{self.single_blocks} single blocks, {', '.join(kinds) or 'plain flow model'}")


def infer_dit_spec(state_dict: dict[str, torch.Tensor], source: str = "model") -> DiTSpec:
    """Detect a (normalized) Tencent/ComfyUI-layout HunyuanVideo DiT; 1.5 is selected by a 1152-wide vision_in."""
    state_dict = strip_wrapper_prefix(state_dict)
    if "txt_in.individual_token_refiner.blocks.0.norm1.weight" not in state_dict or "img_in.proj.weight" not in state_dict:
        raise DisCaFormatError(
            f"{source}: not a HunyuanVideo DiT in the Tencent/ComfyUI key layout (no txt_in.individual_token_refiner / "
            "img_in.proj keys). diffusers-format folders are converted by training/export, not loaded here."
        )
    vision = state_dict.get("vision_in.proj.0.weight")
    arch = ARCH_HV15 if vision is not None and vision.shape[-1] == 1152 else ARCH_HV10
    hidden = state_dict["img_in.proj.weight"].shape[0]
    return DiTSpec(
        arch=arch,
        hidden_size=hidden,
        num_heads=hidden // 128,
        double_blocks=len(_block_indices(state_dict, "double_blocks.")),
        single_blocks=len(_block_indices(state_dict, "single_blocks.")),
        meanflow=any(k.startswith("time_r_in.") for k in state_dict),
        guidance_distilled=any(k.startswith("guidance_in.") for k in state_dict),
    )


def check_predictor_fits(spec: PredictorSpec, dit: DiTSpec, source: str) -> None:
    """Refuse a predictor whose arch, width or heads do not fit the loaded model."""
    if spec.arch != dit.arch:
        want = "double-stream (HunyuanVideo-1.5)" if dit.arch == ARCH_HV15 else "single-stream (HunyuanVideo-1.0)"
        raise DisCaFormatError(
            f"{source}: a {spec.block_type}-stream predictor for {spec.arch} cannot run on a {dit.arch} model, which "
            f"needs a {want} predictor; load the predictor trained for this base model"
        )
    if spec.hidden_size != dit.hidden_size or spec.num_heads != dit.num_heads:
        raise DisCaFormatError(
            f"{source}: predictor hidden size {spec.hidden_size} / {spec.num_heads} heads != model's "
            f"{dit.hidden_size} / {dit.num_heads}; load the predictor trained for this base model"
        )


# --------------------------------------------------------------------------------------------------
# Metadata


FINGERPRINT_KEYS = ("img_in.proj.weight", "final_layer.linear.weight", "time_in.mlp.0.weight", "time_in.in_layer.weight")


def base_fingerprint(dit_state_dict: dict[str, torch.Tensor]) -> str:
    """A short hash of a few base tensors (both Tencent and ComfyUI names), to catch a predictor/base mismatch."""
    digest = hashlib.sha256()
    used = 0
    for key in FINGERPRINT_KEYS:
        tensor = dit_state_dict.get(key)
        if tensor is None:
            continue
        # rounded through bf16 so a file and the same weights loaded in bf16 or fp16 hash alike
        flat = tensor.detach().to("cpu").to(torch.bfloat16).to(torch.float32).flatten()
        digest.update(key.split(".")[0].encode())
        digest.update(flat[:4096].numpy().tobytes())
        used += 1
    if used == 0:
        raise DisCaFormatError("cannot fingerprint the base model: none of " + ", ".join(FINGERPRINT_KEYS) + " present")
    return digest.hexdigest()[:16]


def build_metadata(kind: str, arch: str, **fields) -> dict[str, str]:
    """Our safetensors metadata: string values only; dict/list fields are stored as JSON."""
    if kind not in ("predictor", "dit"):
        raise ValueError(f"kind must be 'predictor' or 'dit', got {kind!r}")
    if arch not in ARCHES:
        raise ValueError(f"arch must be one of {ARCHES}, got {arch!r}")
    meta = {META_FORMAT: FORMAT_VERSION, META_KIND: kind, META_ARCH: arch}
    for name, value in fields.items():
        if value is None:
            continue
        meta[f"disca.{name}"] = value if isinstance(value, str) else json.dumps(value)
    return meta


@dataclass(frozen=True)
class PredictorFile:
    """A predictor read from disk: its spec, normalized official-layout tensors and (our) metadata."""

    path: str
    spec: PredictorSpec
    state_dict: dict
    metadata: dict

    @property
    def base_fingerprint(self) -> str | None:
        return self.metadata.get(META_BASE_FINGERPRINT)

    @property
    def trained_only_on_lists(self) -> tuple[tuple[int, ...], ...] | None:
        """The anchor lists a predictor of ours was trained for, when it saw no interval schedule (a list-specific
        predictor: roll-out training, or a predictor stage on `schedules` of lists only); else None (the official
        files, interval-trained ones)."""
        if META_STEP_LISTS not in self.metadata or META_INTERVAL_RANGE in self.metadata:
            return None
        try:
            lists = json.loads(self.metadata[META_STEP_LISTS])
            return tuple(tuple(sorted(int(step) for step in steps)) for steps in lists)
        except (ValueError, TypeError) as error:
            raise DisCaFormatError(f"{self.path}: metadata {META_STEP_LISTS} is not a JSON list of step lists: "
                                   f"{self.metadata[META_STEP_LISTS]!r} ({error})") from None


def load_predictor_file(path: str) -> PredictorFile:
    """Load an official DisCa predictor (no metadata) or one of ours (with metadata), strictly."""
    tensors, metadata = load_safetensors(path)
    spec, state_dict = read_predictor_state_dict(tensors, path)
    declared = metadata.get(META_ARCH)
    if declared is not None and declared != spec.arch:
        raise DisCaFormatError(f"{path}: metadata says {META_ARCH}={declared} but the keys are a {spec.arch} predictor")
    file = PredictorFile(path=path, spec=spec, state_dict=state_dict, metadata=metadata)
    file.trained_only_on_lists  # a malformed step list is refused here, not at sampling time
    return file
