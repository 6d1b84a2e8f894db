"""DisCa-mini text conditioning: a fixed, documented encoder that runs offline (issue 6).

Why not a real text encoder: none ships its weights inside a PyPI package we can install here (sentence-transformers,
model2vec and fastembed all download weights from the Hub at run time), and the DisCa-mini prompts only use a closed
vocabulary (`VOCABULARY`). So the "encoder" is a fixed function, the same on every machine and every version:

- tokens: the prompt, lower-cased, split into words and commas; a `<bos>` token first (so even the empty negative
  prompt has one valid token and attention never sees an all-masked row), then padding up to `MAX_TOKENS`.
- `prompt_embeds` [L, TEXT_DIM]: each word's embedding is N(0, 1) drawn from a generator seeded by the CRC32 of the
  word (independent of the vocabulary's order, so adding a word never changes the others), plus a sinusoidal
  position code (amplitude `POSITION_SCALE`), so word order - which object a colour belongs to - is visible.
  Padded rows are zero.
- `prompt_mask` [L] int64: 1 for the valid tokens (first), 0 for padding.
- `pooled_embeds` [768]: a fixed N(0, 1/TEXT_DIM) projection of the mean word embedding (no positions), a bag of
  words like CLIP's pooled vector in HunyuanVideo-1.0's modulation path.

The output is exactly the HunyuanVideo-1.0 prompt cache of `training.data` (keys `disca.hosts.diffusers.COND_KEYS`,
`save_embeddings`/`load_embeddings`), so every training stage reads it unchanged; the DiT needs
`text_embed_dim=TEXT_DIM` and `pooled_projection_dim=768`.

    python -m benchmarks.mini.text --out cache/mini --count 4096 --seed 0   # prompts + negative ("") caches
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import zlib

import torch

from benchmarks.mini.dataset import ATTRIBUTES, TRAIN_SEED, ClipSpec, clip_spec, prompt_of
from disca.formats import ARCH_HV10

logger = logging.getLogger(__name__)

TEXT_DIM = 64          # token width (the DiT's text_embed_dim); 4096 for the real HunyuanVideo-1.0 LLM
POOLED_DIM = 768       # HunyuanVideo-1.0's CLIP pooled width, what ComfyUI expects (vec_in_dim)
MAX_TOKENS = 32        # the longest two-object prompt is 23 tokens with <bos>
POSITION_SCALE = 0.5   # position code amplitude relative to the unit-variance word embeddings
BOS = "<bos>"
_FIXED_WORDS = ("a", "small", "moving", "and", "over", "background", ",")
VOCABULARY = tuple(sorted({BOS, *_FIXED_WORDS, *(v for values in ATTRIBUTES.values() for v in values)}))
_TOKEN_PATTERN = re.compile(r"[a-z]+|,")
_POOLED_SEED = 20260611  # seed of the fixed pooled projection


def tokenize(prompt: str) -> list[str]:
    """'a red circle moving left, fast, ...' -> ['<bos>', 'a', 'red', ..., ',', ...]; unknown words are an error."""
    words = _TOKEN_PATTERN.findall(prompt.lower())
    unknown = sorted(set(words) - set(VOCABULARY))
    if unknown:
        raise ValueError(f"prompt {prompt!r} uses words outside the DisCa-mini vocabulary: {unknown}; "
                         f"use only {list(VOCABULARY)}")
    tokens = [BOS, *words]
    if len(tokens) > MAX_TOKENS:
        raise ValueError(f"prompt {prompt!r} has {len(tokens)} tokens, more than MAX_TOKENS={MAX_TOKENS}")
    return tokens


def word_embedding(word: str) -> torch.Tensor:
    """[TEXT_DIM] N(0, 1), seeded by the word's CRC32: stable across machines, versions and vocabulary changes."""
    generator = torch.Generator().manual_seed(zlib.crc32(word.encode("utf-8")))
    return torch.randn(TEXT_DIM, generator=generator)


def _position_codes() -> torch.Tensor:
    """Sinusoidal codes [MAX_TOKENS, TEXT_DIM] (Vaswani et al. 2017, sec. 3.5)."""
    position = torch.arange(MAX_TOKENS, dtype=torch.float64).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, TEXT_DIM, 2, dtype=torch.float64) * (-math.log(10000.0) / TEXT_DIM))
    codes = torch.zeros(MAX_TOKENS, TEXT_DIM, dtype=torch.float64)
    codes[:, 0::2] = torch.sin(position * frequency)
    codes[:, 1::2] = torch.cos(position * frequency)
    return codes.float()


def _pooled_projection() -> torch.Tensor:
    generator = torch.Generator().manual_seed(_POOLED_SEED)
    return torch.randn(TEXT_DIM, POOLED_DIM, generator=generator) / math.sqrt(TEXT_DIM)


def encode_prompts(prompts: list[str]) -> dict[str, torch.Tensor]:
    """Prompts -> HunyuanVideo-1.0 conditioning: prompt_embeds [N, L, TEXT_DIM], prompt_mask [N, L], pooled_embeds [N, 768]."""
    table = {word: word_embedding(word) for word in VOCABULARY}
    positions, projection = _position_codes(), _pooled_projection()
    embeds = torch.zeros(len(prompts), MAX_TOKENS, TEXT_DIM)
    mask = torch.zeros(len(prompts), MAX_TOKENS, dtype=torch.int64)
    pooled = torch.zeros(len(prompts), POOLED_DIM)
    for row, prompt in enumerate(prompts):
        words = torch.stack([table[token] for token in tokenize(prompt)])
        count = len(words)
        embeds[row, :count] = words + POSITION_SCALE * positions[:count]
        mask[row, :count] = 1
        pooled[row] = words.mean(0) @ projection
    return {"prompt_embeds": embeds, "prompt_mask": mask, "pooled_embeds": pooled}


def write_prompt_caches(folder: str, count: int, seed: int = TRAIN_SEED, spec: ClipSpec = ClipSpec()) -> dict[str, str]:
    """prompts.safetensors (clips 0..count-1 of split `seed`) and negative.safetensors ("") in training.data's format."""
    from training.data import save_embeddings

    prompts = [prompt_of(clip_spec(seed, index, spec)) for index in range(count)]
    paths = {"prompts": os.path.join(folder, "prompts.safetensors"),
             "negative_prompt": os.path.join(folder, "negative.safetensors")}
    save_embeddings(paths["prompts"], ARCH_HV10, encode_prompts(prompts), prompts)
    save_embeddings(paths["negative_prompt"], ARCH_HV10, encode_prompts([""]), [""])
    logger.info("wrote %d DisCa-mini prompts (split seed %d) and the empty negative to %s", count, seed, folder)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for prompts.safetensors and negative.safetensors")
    parser.add_argument("--count", type=int, required=True, help="number of clips (prompts) of the split")
    parser.add_argument("--seed", type=int, default=TRAIN_SEED, help="split seed (0 train, 1 held out)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(write_prompt_caches(args.out, args.count, args.seed), indent=1))


if __name__ == "__main__":
    main()
