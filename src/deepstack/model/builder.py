"""Assemble a DeepStack model from a vision encoder and a causal LM (see ``parts`` for what may be named),
or load a saved one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError

from .configuration import DeepStackConfig
from .modeling import DeepStackForConditionalGeneration
from .parts import load_language, load_vision
from .processing import DeepStackProcessor


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
    """A saved DeepStack model and processor from a local directory. A damaged folder raises ``ValueError``
    naming the file (a config that is not JSON, weights cut short)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"{path}: not a saved DeepStack model (no config.json); make one with `deepstack build`")
    try:
        json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path / 'config.json'}: not valid JSON ({error}); the folder is damaged, save it again") from None
    try:
        model = DeepStackForConditionalGeneration.from_pretrained(path, local_files_only=True, **kwargs)
    except SafetensorError as error:
        weights = ", ".join(sorted(file.name for file in path.glob("*.safetensors"))) or "model.safetensors"
        raise ValueError(
            f"{path}: the weights ({weights}) cannot be read ({error}); the file is damaged or cut short, copy or "
            "save it again"
        ) from None
    processor = DeepStackProcessor.from_pretrained(path, local_files_only=True)
    return model.eval(), processor
