"""Models for the factory: an HF directory given by the user, or one built here.

A built model is a byte-level BPE tokenizer trained with `tokenizers` on the
procedural corpus and a Llama-architecture model made with `transformers`,
saved in HF format so transformers and vLLM both load it. It is a pure function
of (build config, seed) and is cached under a directory named by the hash of
both, written to a temporary directory and renamed, so concurrent builders on
one node never see half a model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

from runtime.core.config import BuildConfig, ModelConfig
from runtime.core.errors import ModelPathError

BUILDER_VERSION = 2
SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|bos|>{{ m['role'] }}\n{{ m['content'] }}<|eos|>{% endfor %}"
    "{% if add_generation_prompt %}<|bos|>assistant\n{% endif %}"
)


def resolve_model(cfg: ModelConfig, seed: int) -> Path:
    """Path of the model the config names, building it first if needed."""
    if cfg.path:
        return check_model_dir(Path(cfg.path).expanduser())
    return ensure_built(cfg.build, seed, Path(cfg.cache_dir).expanduser())


def check_model_dir(path: Path) -> Path:
    if not path.is_dir():
        raise ModelPathError(f"model.path: no such directory: {path}")
    if not (path / "config.json").is_file():
        raise ModelPathError(f"model.path: {path} has no config.json; is it an HF model directory?")
    return path.resolve()


def build_key(build: BuildConfig, seed: int) -> str:
    spec = {"build": build.model_dump(mode="json"), "seed": seed, "builder": BUILDER_VERSION}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def ensure_built(build: BuildConfig, seed: int, cache_dir: Path) -> Path:
    """The cached model for (build, seed), built once."""
    target = cache_dir / f"llama-{build.preset}-{build_key(build, seed)}"
    if (target / "config.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=cache_dir))
    try:
        build_model(build, seed, staging)
        os.rename(staging, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_tokenizer(build: BuildConfig, seed: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from runtime.data.corpus import corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=build.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(seed, build.corpus_docs), trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>"
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def llama_config(build: BuildConfig, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=build.hidden_size,
        intermediate_size=build.intermediate_size,
        num_hidden_layers=build.num_layers,
        num_attention_heads=build.num_heads,
        num_key_value_heads=build.num_heads,
        max_position_embeddings=build.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def init_model(config, seed: int):
    """A freshly initialised model; the same seed gives the same weights."""
    import torch
    from transformers import LlamaForCausalLM

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return LlamaForCausalLM(config).float().eval()
    finally:
        torch.random.set_rng_state(generator_state)


def build_model(build: BuildConfig, seed: int, out: Path) -> None:
    tokenizer = build_tokenizer(build, seed)
    model = init_model(llama_config(build, tokenizer), seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def count_parameters(path: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in path.glob("*.safetensors"):
        with safe_open(file, "pt") as f:
            total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return total
