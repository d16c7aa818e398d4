"""The upgrade path: a trained ``none`` (LLaVA-style) model turned into DeepStack-L and trained on.

The ``none`` checkpoint loads with its config changed to ``llm`` (and any stack settings): every saved weight
is kept, and the weights ``llm`` adds start at their documented values (docs/settings.md, "Stack settings":
a gate at 0, per-stack projectors copied from the projector). With the shared projector of the paper
(Sec. 3.2) ``llm`` adds no weight at all, so the stacks go in at once and change the model's outputs; a closed
gate makes the new model start exactly at the old one's outputs. The row records the loss on the same
training records just before and after the switch, and the training loss of the first steps after it.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from ...model.builder import load_pretrained
from ...model.configuration import DeepStackConfig
from ...model.modeling import DeepStackForConditionalGeneration
from ...train.config import DataSection, DataSource
from ...train.data import IGNORE_INDEX, Collator, LlavaDataset, validate
from ...train.folder import METRICS
from ..recipe import Recipe, initial_model, run_config, score, train_recipe


def switch(source: Path, out: Path, mode: str = "llm", seed: int = 0, **settings) -> Path:
    """Save to ``out`` the model of ``source`` with ``stack_mode=mode`` and ``settings``: the same weights, the
    new ones at their starting values (made from ``seed``), and the processor of the new mode."""
    saved = DeepStackConfig.from_pretrained(source).to_dict()
    config = DeepStackConfig.from_dict({**saved, "stack_mode": mode, **settings})
    torch.manual_seed(seed)
    model = DeepStackForConditionalGeneration.from_pretrained(source, config=config)
    _, processor = load_pretrained(source)
    processor = type(processor).for_config(model.config, processor.image_processor, processor.tokenizer)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@torch.no_grad()
def records_loss(model_dir: Path, records: Path, images: Path, batch_size: int = 16) -> float:
    """The mean loss over every answer token of ``records`` (a training file) of the model in ``model_dir``."""
    model, processor = load_pretrained(model_dir)
    items, problems = validate([DataSource(path=str(records), image_folder=str(images))], processor, "finetune",
                               DataSection().max_length)
    if problems:
        raise ValueError(f"{records}: {problems[0]}")
    dataset, collate = LlavaDataset(items[0], processor), Collator(processor.tokenizer.pad_token_id or 0)
    total, tokens = 0.0, 0
    for begin in range(0, len(dataset), batch_size):
        batch = collate([dataset[index] for index in range(begin, min(begin + batch_size, len(dataset)))])
        batch = {key: value.to(model.device) for key, value in batch.items()}
        answers = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        total += model(**batch).loss.item() * answers
        tokens += answers
    return total / max(tokens, 1)


def upgrade_and_evaluate(data: Path, out: Path, seed: int, recipe: Recipe, at: float = 0.5, mode: str = "llm",
                         first_steps: int = 20, switch_records: int = 64, **settings) -> dict:
    """Train ``none`` for the fraction ``at`` of the recipe's steps, switch it to ``mode`` (with ``settings``)
    and train the rest, the learning rate schedule starting over; evaluate it as ``train_and_evaluate`` does.
    With ``recipe.curve_every``, the curve runs across both parts (two points at the switch: before and after);
    with ``recipe.stop_on_plateau`` too, only the part after the switch may stop (on its own curve's plateau).
    The row's ``upgrade`` holds the steps before the switch, the loss on the first ``switch_records`` training
    records before and after it, and the training losses of the first ``first_steps`` steps after it."""
    started = time.time()
    before = round(recipe.steps * at)
    if not 0 < before < recipe.steps:
        raise ValueError(f"upgrade at {at} of {recipe.steps} steps leaves no step on one side; use 0 < at < 1")
    first = replace(recipe.with_steps(before), stop_on_plateau=False)  # the switch comes at a fixed step
    init = initial_model("none", data, out / "none", seed, first)
    none = train_recipe(run_config(init, data, out / "none" / "trained", seed, first), data, first)
    switched = switch(none.result.output_dir, out / "switched", mode, seed, **settings)
    subset = out / "switch_records.json"
    subset.write_text(json.dumps(json.loads((data / "train.json").read_text())[:switch_records]))
    losses = {"loss_before_switch": records_loss(none.result.output_dir, subset, data / "images"),
              "loss_after_switch": records_loss(switched, subset, data / "images")}
    rest = recipe.with_steps(recipe.steps - before)
    config = run_config(switched, data, out / "trained", seed, rest)
    config = config.model_copy(update={"output": config.output.model_copy(update={"log_every": 1})})
    after = train_recipe(config, data, rest)
    logged = [json.loads(line) for line in (out / "trained" / METRICS).read_text().splitlines()]
    row = {"mode": mode, "settings": settings, "seed": seed, **score(after.result.output_dir, data, recipe),
           "final_train_loss": after.result.final_loss, "steps": before + after.result.steps,
           "max_steps": recipe.steps,
           "train_seconds": round(none.train_seconds + after.train_seconds, 1),
           "total_seconds": round(time.time() - started, 1),
           "upgrade": {"steps_before": before, **losses, "none_train_seconds": round(none.train_seconds, 1),
                       "first_losses": [line["loss"] for line in logged[:first_steps]]}}
    if after.phase_seconds is not None:
        row["phase_seconds"] = after.phase_seconds  # the steps after the switch
    if none.curve is not None:
        offset = none.curve[-1]["train_seconds_so_far"]
        row["curve"] = none.curve + [{**point, "step": point["step"] + before,
                                      "train_seconds_so_far": round(point["train_seconds_so_far"] + offset, 2)}
                                     for point in after.curve]
        row["curve_eval_seconds"] = round(none.curve_eval_seconds + after.curve_eval_seconds, 1)
    return row
