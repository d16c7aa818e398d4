"""What the tests build: tiny models, random images, tiny LLaVA-format datasets and run configs."""

import json
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw
from transformers import (
    LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil, LlavaNextProcessor,
)

from deepstack import build_model


def random_image(seed: int, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def tiny(mode: str = "llm", vision: str = "tiny-clip", language: str = "tiny-llama", **settings):
    """A tiny fp32 DeepStack model (32x32 input, 8x8 patches: N = 16 tokens, S = 4 stacks) and processor."""
    torch.manual_seed(0)
    return build_model(vision, language, stack_mode=mode, **settings)


def sharpened(parts):
    """``parts`` (a tiny model and processor) with the LLM's weights scaled up 8x: a random tiny LLM at its
    initial scale answers every prompt with one repeated token, so a test of what answers depend on (positions,
    masks, cached keys) needs one that answers each prompt differently."""
    model, processor = parts
    with torch.no_grad():
        for weight in model.language_model.parameters():
            weight.mul_(8)
    return model, processor


def image_positions(input_ids: torch.Tensor, model) -> torch.Tensor:
    return input_ids == model.config.image_token_id


# ---- transformers' LLaVA-NeXT beside a tiny DeepStack-HD model (test_hd.py, test_convert_llava_next.py) ----
# tiny encoder: 32x32 input, 8x8 patches, so a tile is 4x4 = 16 tokens (N)
PINPOINTS = [[32, 64], [64, 32], [64, 64], [32, 96]]


def llava_next_processor(processor):
    """transformers' LLaVA-NeXT processor for the same tiny encoder (32 px tiles, 8 px patches, CLS dropped)."""
    mean, std = processor.image_processor.image_mean, processor.image_processor.image_std
    images = LlavaNextImageProcessorPil(
        size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=PINPOINTS,
        image_mean=mean, image_std=std,
    )
    return LlavaNextProcessor(
        image_processor=images, tokenizer=processor.tokenizer, patch_size=8, vision_feature_select_strategy="default",
        image_token=processor.image_token, num_additional_image_tokens=1,
    )


def llava_next_twin(model):
    """A random LlavaNextForConditionalGeneration of the same shapes, and our model holding its weights."""
    config = model.config
    reference_config = LlavaNextConfig(
        vision_config=config.vision_config.to_dict(), text_config=config.text_config.to_dict(),
        image_token_id=config.image_token_id, image_grid_pinpoints=PINPOINTS, vision_feature_layer=-2,
        vision_feature_select_strategy="default", projector_hidden_act="gelu", tie_word_embeddings=False,
    )
    torch.manual_seed(7)
    reference = LlavaNextForConditionalGeneration(reference_config).eval()
    model.load_state_dict(
        {llava_next_deepstack_name(name): tensor for name, tensor in reference.state_dict().items()}, strict=True
    )
    return reference


def llava_next_deepstack_name(name: str) -> str:
    """Our name of a tensor of transformers' in-memory LLaVA-NeXT, written out (not the converter's):
    projector <- multi_modal_projector, image_newline kept."""
    renames = {
        "model.vision_tower.": "vision_tower.", "model.multi_modal_projector.": "projector.",
        "model.image_newline": "image_newline", "model.language_model.": "language_model.model.",
        "lm_head.": "language_model.lm_head.",
    }
    prefix = next(p for p in renames if name.startswith(p))
    return renames[prefix] + name[len(prefix) :]


# ---- tiny LLaVA-format datasets for the training tests ----------------------------------------------
COLOURS = {
    "red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220), "yellow": (230, 210, 40),
    "purple": (140, 40, 170), "orange": (240, 140, 20), "black": (10, 10, 10), "white": (245, 245, 245),
}


def write_dataset(folder: Path, count: int = 16, name: str = "train.json", jsonl: bool = False) -> Path:
    """``count`` images of a coloured square on grey, with a question whose answer is the colour."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    records = []
    for index in range(count):
        colour = names[index % len(names)]
        image = Image.new("RGB", (40, 40), (128, 128, 128))
        offset = 4 * (index // len(names))
        ImageDraw.Draw(image).rectangle((8 + offset, 8, 30 + offset, 30), fill=COLOURS[colour])
        image.save(images / f"{index:03d}.png")
        records.append(
            {
                "id": f"{index:03d}",
                "image": f"{index:03d}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat colour is the square?"},
                    {"from": "gpt", "value": colour},
                ],
            }
        )
    path = folder / name
    if jsonl:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    return path


def write_config(folder: Path, data_file: Path, **sections) -> Path:
    """A run config for the tiny model; ``sections`` update the defaults (e.g. optim={"lr": 1e-3})."""
    config = {
        "stage": "finetune",
        "model": {"vision": "tiny-clip", "llm": "tiny-llama", "settings": {"stack_mode": "llm"}},
        "data": {"sources": [{"path": str(data_file), "image_folder": str(data_file.parent / "images")}],
                 "num_workers": 0},
        "optim": {"global_batch_size": 8, "micro_batch_size": 4, "lr": 3e-3, "precision": "fp32", "max_steps": 4,
                  "warmup_ratio": 0.0},
        "output": {"dir": str(folder / "run"), "save_every": 1000},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def table_row(markdown: str, label: str) -> list[str] | None:
    """The cells of the Markdown table row whose first cell is ``label`` (the columns' padding stripped)."""
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == label:
            return cells
    return None
