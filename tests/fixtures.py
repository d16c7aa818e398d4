"""What the tests build: tiny models, random images, tiny LLaVA-format datasets and run configs."""

import json
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw

from deepstack import build_model


def random_image(seed: int, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def tiny(mode: str = "llm", vision: str = "tiny-clip", language: str = "tiny-llama", **settings):
    """A tiny fp32 DeepStack model (32x32 input, 8x8 patches: N = 16 tokens, S = 4 stacks) and processor."""
    torch.manual_seed(0)
    return build_model(vision, language, stack_mode=mode, **settings)


def image_positions(input_ids: torch.Tensor, model) -> torch.Tensor:
    return input_ids == model.config.image_token_id


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
