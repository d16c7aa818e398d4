"""LLaVA-format data: reading, validation before step 1, prompt formatting with answer-only labels, batching.

A record: ``{"id": ..., "image": "relative/path.jpg" (optional; or a list), "conversations": [{"from": "human",
"value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}`` in a JSON array file or a JSONL file.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..model.processing import DeepStackProcessor, displayed_size, load_image, open_image, pad_views
from .config import DataSource

IGNORE_INDEX = -100
ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


@dataclass(frozen=True)
class Problem:
    file: str
    location: str  # "line 12" (JSONL, or invalid JSON) or "record 5" (JSON array)
    record_id: str | None
    reason: str

    def __str__(self) -> str:
        named = f" (id {self.record_id})" if self.record_id is not None else ""
        return f"{self.file}:{self.location}{named}: {self.reason}"


@dataclass(frozen=True)
class Item:
    """A valid record with what the loader needs: its encoded tokens and its image paths."""

    input_ids: list[int]
    labels: list[int]
    images: list[str]


def read_records(source: DataSource) -> Iterator[tuple[str, object | Problem]]:
    """(location, record) for every record of a JSON or JSONL file; a ``Problem`` where JSON is invalid."""
    path = Path(source.path)
    if not path.is_file():
        yield "file", Problem(str(path), "file", None, "data file not found")
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as error:
                yield f"line {number}", Problem(str(path), f"line {number}", None, f"invalid JSON: {error.msg}")
        return
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        yield "file", Problem(
            str(path), f"line {error.lineno}", None, f"invalid JSON: {error.msg} (column {error.colno}); no record read"
        )
        return
    if not isinstance(records, list):
        yield "file", Problem(str(path), "file", None, "a .json data file must hold a list of records")
        return
    for index, record in enumerate(records):
        yield f"record {index}", record


def check_image(path: Path) -> str | None:
    """Why an image cannot be used, or None: the loader's own checks, size limit included (``open_image``).
    JPEGs decode at reduced size (draft mode) to stay fast."""
    if not path.is_file() and not path.is_symlink():
        return f"image file not found: {path}"
    try:
        open_image(path, draft=(128, 128))
    except ValueError as error:
        return str(error)
    except Exception:  # noqa: BLE001 - PIL raises many kinds of error on a damaged file
        return f"{path}: corrupt image"
    return None


def outside_folder(name: str, source: DataSource) -> str | None:
    """Why an image path leaves the source's image folder (absolute, "..", or a link out of it), or None.
    Resolved paths are compared, so that neither "../" nor a symbolic link reads files elsewhere."""
    folder = Path(source.image_folder)
    try:
        target = (folder / name).resolve()
    except (OSError, RuntimeError):  # a symlink loop: check_image says so
        return None
    if target.is_relative_to(folder.resolve()):
        return None
    return (
        f"image {name!r} is outside the source's image_folder {folder} (it resolves to {target}); move it into "
        f"that folder, or set allow_outside: true on this data source ({source.path}) to read images elsewhere"
    )


class ConversationEncoder:
    """Token ids and answer-only labels for a record: chat template (finetune) or plain captions (pretrain)."""

    def __init__(self, processor: DeepStackProcessor, stage: str, max_length: int):
        self.processor, self.stage, self.max_length = processor, stage, max_length
        self.tokenizer = processor.tokenizer

    def _ids(self, text: str, image_sizes=None) -> list[int]:
        return self._ids_of([text], image_sizes)[0]

    def _ids_of(self, texts: list[str], image_sizes=None) -> list[list[int]]:
        # image_sizes: (height, width) per placeholder in order, for DeepStack-HD's size-dependent token counts;
        # one tokenizer call for all the texts (the same ids as one call each, without the per-call overhead)
        expanded = [self.processor.expand_image_tokens(text, image_sizes) for text in texts]
        return self.tokenizer(expanded, add_special_tokens=False)["input_ids"]

    def _plain(self, turns: list[dict], image_sizes=None) -> tuple[list[int], list[int]]:
        # LLaVA's pretrain format: the image, a newline, the caption, end of text; the instruction is dropped
        images = sum(turn["value"].count(self.processor.image_token) for turn in turns if turn["from"] == "human")
        prompt = self._ids(self.processor.image_token * images + "\n", image_sizes)
        answer = self._ids(next(turn["value"] for turn in turns if turn["from"] == "gpt"))
        answer = answer + [self.tokenizer.eos_token_id]
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        return bos + prompt + answer, [IGNORE_INDEX] * (len(bos) + len(prompt)) + answer

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.processor.render_chat(messages, add_generation_prompt)

    def _chat(self, turns: list[dict], image_sizes=None) -> tuple[list[int], list[int]]:
        # an answer's labels run from the end of the conversation before it (with the generation prompt) to the
        # end of the conversation through it: the whole text and those two prefixes per answer, tokenized at once
        messages = [{"role": ROLES[turn["from"]], "content": turn["value"]} for turn in turns]
        texts = [self._render(messages, False)]
        for index, message in enumerate(messages):
            if message["role"] == "assistant":
                texts += [self._render(messages[:index], True), self._render(messages[: index + 1], False)]
        ids, *prefixes = self._ids_of(texts, image_sizes)
        labels = [IGNORE_INDEX] * len(ids)
        for before, through in zip(prefixes[::2], prefixes[1::2]):
            start, end = len(before), len(through)
            labels[start:end] = ids[start:end]
        return ids, labels

    def encode(self, turns: list[dict], image_sizes=None) -> tuple[list[int], list[int]]:
        """``image_sizes``: (height, width) of the record's images in order; needed under DeepStack-HD only."""
        if self.stage == "pretrain":
            return self._plain(turns, image_sizes)
        if self.processor.template is None:
            raise ValueError("finetune formats conversations with the LLM's chat template, and its tokenizer has none")
        return self._chat(turns, image_sizes)


def _check_record(record, source: DataSource, encoder: ConversationEncoder) -> tuple[Item | None, str | None]:
    if not isinstance(record, dict):
        return None, "record is not a JSON object"
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        return None, "no 'conversations' list"
    for number, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("from") not in ROLES or not isinstance(turn.get("value"), str):
            return None, f"turn {number} is not {{'from': 'human'|'gpt'|'system', 'value': text}}"
    if not any(turn["from"] == "gpt" for turn in turns):
        return None, "no answer turn (from: gpt)"
    image_field = record.get("image")
    images = [] if image_field is None else [image_field] if isinstance(image_field, str) else image_field
    if not isinstance(images, list) or not all(isinstance(name, str) for name in images):
        return None, "'image' must be a path or a list of paths"
    placeholders = sum(turn["value"].count(encoder.processor.image_token) for turn in turns)
    if placeholders != len(images):
        return None, f"{placeholders} <image> placeholder(s) but {len(images)} image(s)"
    for name in images if not source.allow_outside else []:
        reason = outside_folder(name, source)
        if reason:
            return None, reason
    paths = [str(Path(source.image_folder) / name) for name in images]
    for path in paths:
        reason = check_image(Path(path))
        if reason:
            return None, reason
    sizes = None
    if encoder.processor.image_grid_pinpoints is not None:  # DeepStack-HD: token counts follow the image sizes
        sizes = []
        for path in paths:
            with Image.open(path) as image:  # the header only
                sizes.append(displayed_size(image))
    input_ids, labels = encoder.encode(turns, sizes)
    limit = encoder.max_length
    if len(input_ids) > limit:
        image_id = encoder.processor.image_token_id
        last_image = max((i for i, token in enumerate(input_ids) if token == image_id), default=-1)
        if last_image >= limit:
            return None, f"its image tokens end at position {last_image + 1}, past max_length={limit}"
        input_ids, labels = input_ids[:limit], labels[:limit]
        if all(label == IGNORE_INDEX for label in labels):
            return None, f"no answer token within max_length={limit}"
    return Item(input_ids, labels, paths), None


def validate(
    sources: list[DataSource], processor: DeepStackProcessor, stage: str, max_length: int
) -> tuple[list[list[Item]], list[Problem]]:
    """Every record of every source checked: the valid items per source, and every problem found."""
    encoder = ConversationEncoder(processor, stage, max_length)
    items: list[list[Item]] = []
    problems: list[Problem] = []
    for source in sources:
        valid = []
        for location, record in read_records(source):
            if isinstance(record, Problem):
                problems.append(record)
                continue
            item, reason = _check_record(record, source, encoder)
            if reason:
                record_id = record.get("id") if isinstance(record, dict) else None
                problems.append(Problem(source.path, location, None if record_id is None else str(record_id), reason))
            else:
                valid.append(item)
        items.append(valid)
    return items, problems


def mix(items: list[list[Item]], sources: list[DataSource], seed: int) -> list[Item]:
    """Sources mixed by weight: the integer part repeats every record, the fraction adds a seeded subset."""
    rng = random.Random(seed)
    mixed = []
    for valid, source in zip(items, sources):
        whole, fraction = int(source.weight), source.weight - int(source.weight)
        mixed += valid * whole
        mixed += rng.sample(valid, round(fraction * len(valid)))
    return mixed


class LlavaDataset(torch.utils.data.Dataset):
    """Tokens were made during validation; images are decoded here, in the DataLoader's workers."""

    def __init__(self, items: list[Item], processor: DeepStackProcessor):
        self.items, self.processor = items, processor

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        sample = {"input_ids": torch.tensor(item.input_ids), "labels": torch.tensor(item.labels)}
        if item.images:
            sample.update(self.processor.batch_views([load_image(path) for path in item.images]))
        return sample


class Collator:
    """Right-padded batch; images of all samples concatenated in order (they fill the image tokens in order)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, samples: list[dict]) -> dict:
        length = max(len(s["input_ids"]) for s in samples)
        input_ids = torch.full((len(samples), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
        for row, sample in enumerate(samples):
            n = len(sample["input_ids"])
            input_ids[row, :n], labels[row, :n], attention_mask[row, :n] = sample["input_ids"], sample["labels"], 1
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        pixels = [s["pixel_values"] for s in samples if "pixel_values" in s]
        if pixels:  # DeepStack-HD: images of different tile grids have different view counts, zero-padded
            batch["pixel_values"] = pad_views(pixels)
        sizes = [s["image_sizes"] for s in samples if "image_sizes" in s]
        if sizes:
            batch["image_sizes"] = torch.cat(sizes)
        return batch
