"""Exact-match evaluation of a model on LLaVA-format question records, by question kind."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..model.modeling import DeepStackForConditionalGeneration
from ..model.processing import DeepStackProcessor
from .finedetail import normalise
from .generate import answer


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
    """Greedy answers to every record's first question; accuracy overall and per ``kind`` field.

    Returns ``{"accuracy": {kind: fraction, "all": fraction}, "count": {...}, "predictions": [...]}``.
    """
    records = json.loads(Path(records_file).read_text())[:limit]
    model.eval()
    predictions = []
    for begin in tqdm(range(0, len(records), batch_size), desc="evaluate", disable=not progress, leave=False):
        batch = records[begin : begin + batch_size]
        images = [Image.open(Path(image_folder) / record["image"]).convert("RGB") for record in batch]
        questions = [record["conversations"][0]["value"].replace(processor.image_token, "").strip() for record in batch]
        answers = answer(model, processor, images, questions, max_new_tokens=max_new_tokens, do_sample=False)
        for record, question, predicted in zip(batch, questions, answers):
            expected = record["conversations"][1]["value"]
            predictions.append(
                {
                    "id": record.get("id"),
                    "kind": record.get("kind", "all"),
                    "question": question,
                    "answer": expected,
                    "prediction": predicted,
                    "correct": normalise(predicted) == normalise(expected),
                }
            )
    totals, correct = defaultdict(int), defaultdict(int)
    for prediction in predictions:
        for kind in (prediction["kind"], "all"):
            totals[kind] += 1
            correct[kind] += prediction["correct"]
    return {
        "accuracy": {kind: correct[kind] / totals[kind] for kind in totals},
        "count": dict(totals),
        "predictions": predictions,
    }


@torch.inference_mode()
def prefill_seconds(model, processor, image: Image.Image, question: str, repeats: int = 5) -> float:
    """Median time of one prefill forward (vision side included) for one image and question."""
    inputs = processor(images=image, text=f"{processor.image_token}\n{question}").to(model.device)
    model(**inputs)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(**inputs)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]
