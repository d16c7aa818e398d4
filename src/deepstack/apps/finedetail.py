"""A fine-detail task where DeepStack's claim can be checked on a CPU (issue 4, DEEPSTACK.md).

Each 64x64 image has a large shape (coarse: its colour and its kind survive downsampling) and a small white
label with one digit printed in Pillow's bundled font (fine: about 5x7 px, legible at 64 px and blurred to
about 2.5x3.5 px in the 32 px global view). Questions come in two kinds: *fine* ("What number is on the
label?") and *coarse* ("What colour is the large shape?", "What shape is the large object?"). Data is written
in LLaVA format: ``images/``, ``train.json`` (multi-turn, every question of an image), and ``val.json`` /
``test.json`` (one question per record, with a ``kind`` field).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

CANVAS = 64
COLOURS = {
    "red": (210, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 210),
    "yellow": (225, 200, 30), "purple": (140, 50, 170), "orange": (240, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
QUESTIONS = {
    "digit": ("fine", "What number is on the label?"),
    "colour": ("coarse", "What colour is the large shape?"),
    "shape": ("coarse", "What shape is the large object?"),
}
SPLITS = {"train": 3000, "val": 200, "test": 400}


@dataclass(frozen=True)
class Scene:
    digit: str
    colour: str
    shape: str

    def answer(self, question: str) -> str:
        return getattr(self, question)


def _font(size: int = 9) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled font: no system font, no download


def draw_scene(rng: random.Random) -> tuple[Image.Image, Scene]:
    scene = Scene(str(rng.randrange(10)), rng.choice(list(COLOURS)), rng.choice(SHAPES))
    tone = rng.randrange(200, 236)
    image = Image.new("RGB", (CANVAS, CANVAS), (tone, tone + rng.randrange(-8, 9), tone + rng.randrange(-8, 9)))
    draw = ImageDraw.Draw(image)
    # the label sits in one corner; the shape stays out of that quadrant's corner
    corner = rng.randrange(4)
    left = 2 + rng.randrange(3) if corner % 2 == 0 else CANVAS - 13 - rng.randrange(3)
    top = 2 + rng.randrange(3) if corner < 2 else CANVAS - 14 - rng.randrange(3)
    size = rng.randrange(26, 34)
    cx = CANVAS // 2 + rng.randrange(-4, 5)
    cy = CANVAS // 2 + rng.randrange(-4, 5)
    box = (cx - size // 2, cy - size // 2, cx + size // 2, cy + size // 2)
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif scene.shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=fill)
    draw.rectangle((left, top, left + 10, top + 11), fill=(250, 250, 250), outline=(90, 90, 90))
    draw.text((left + 3, top + 1), scene.digit, font=_font(), fill=(0, 0, 0))
    return image, scene


def make_data(out: str | Path, seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, int]:
    """Write the dataset; deterministic for a seed. Returns the number of images per split."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    sizes = sizes or SPLITS
    for split_index, (split, count) in enumerate(sizes.items()):
        rng = random.Random(seed * 1000 + split_index)
        records = []
        for index in range(count):
            image, scene = draw_scene(rng)
            name = f"{split}-{index:05d}.png"
            image.save(out / "images" / name)
            if split == "train":
                order = list(QUESTIONS)
                rng.shuffle(order)
                turns = []
                for position, question in enumerate(order):
                    prompt = QUESTIONS[question][1]
                    turns += [
                        {"from": "human", "value": f"<image>\n{prompt}" if position == 0 else prompt},
                        {"from": "gpt", "value": scene.answer(question)},
                    ]
                records.append({"id": name[:-4], "image": name, "conversations": turns})
            else:
                for question, (kind, prompt) in QUESTIONS.items():
                    records.append(
                        {
                            "id": f"{name[:-4]}-{question}",
                            "image": name,
                            "kind": kind,
                            "question": question,
                            "conversations": [
                                {"from": "human", "value": f"<image>\n{prompt}"},
                                {"from": "gpt", "value": scene.answer(question)},
                            ],
                        }
                    )
        (out / f"{split}.json").write_text(json.dumps(records))
    (out / "dataset.json").write_text(json.dumps({"seed": seed, "sizes": sizes, "canvas": CANVAS}, indent=2))
    return dict(sizes)


def normalise(text: str) -> str:
    """Exact-match normalisation (VQA style): lower case, no punctuation or articles, single spaces."""
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return " ".join(word for word in text.split() if word not in ("a", "an", "the"))
