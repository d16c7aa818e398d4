"""Evaluation of a model on LLaVA-format question records: greedy answers, exact match, accuracy by group."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from ..infer.generate import answer
from ..model.modeling import DeepStackForConditionalGeneration
from ..model.processing import DeepStackProcessor, load_image
from .metrics import exact_match, tally

RECORD_TEXT = ("id", "image", "conversations")  # what every record has; any other field is carried through


def evaluate(
    model: DeepStackForConditionalGeneration,
    processor: DeepStackProcessor,
    records_file: str | Path,
    image_folder: str | Path,
    batch_size: int = 32,
    max_new_tokens: int = 12,
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    """Greedy answers to every record's first question, scored by exact match against its first answer.

    Each prediction holds the record's ``id`` and ``image``, the ``prompt`` (the question without the image
    placeholder), the expected ``answer``, the ``prediction``, ``correct``, and every other field of the record
    (e.g. ``kind``). Returns ``{"accuracy": {"all": ..., kind: ...}, "count": ..., "predictions": [...]}``.
    """
    records = json.loads(Path(records_file).read_text())[:limit]
    model.eval()
    predictions = []
    for begin in tqdm(range(0, len(records), batch_size), desc="evaluate", disable=not progress, leave=False):
        batch = records[begin : begin + batch_size]
        images = [load_image(Path(image_folder) / record["image"]) for record in batch]
        prompts = [record["conversations"][0]["value"].replace(processor.image_token, "").strip() for record in batch]
        answers = answer(model, processor, images, prompts, max_new_tokens=max_new_tokens, do_sample=False)
        for record, prompt, predicted in zip(batch, prompts, answers):
            expected = record["conversations"][1]["value"]
            extra = {key: value for key, value in record.items() if key not in RECORD_TEXT}
            predictions.append({
                "id": record.get("id"), "image": record["image"], **extra, "prompt": prompt, "answer": expected,
                "prediction": predicted, "correct": exact_match(predicted, expected),
            })
    groups = tally(predictions, by="kind")
    return {
        "accuracy": {group: right / total for group, (right, total) in groups.items()},
        "count": {group: total for group, (_, total) in groups.items()},
        "predictions": predictions,
    }
