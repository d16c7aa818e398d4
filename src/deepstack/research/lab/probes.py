"""Evaluation-time probes of the lab's trained models: the same weights, one setting changed at evaluation.

When arms reach the same accuracy, a probe tells what the models actually read. ``layout``: the three Sampling2D
layouts of Table 5, each trained model evaluated under every layout. Only ``2d_spatial`` puts a tile's four
quarters at that tile's global token (docs/finedetail.md); a model that reads a quarter where its own layout put
it loses that quarter when evaluated under a layout that puts another token's hi-res patch there, and keeps its
accuracy under a layout that puts the same patch in the same (stack, token). ``stacks``: DeepStack-L trained with
all four stacks, evaluated with only the first k injected (``num_stack_layers=k``, Fig. 3c): the stacks that the
model's accuracy does not need are the ones it does not read. ``detail``: the ``levels`` group's models evaluated
on the test images and on the same images holding only what the 32 px global view holds (``global_view_data``):
a model that reads detail only the hi-res view shows falls to the level of ``none``, and a model that reads the
global view alone (``stack_source=vit_levels``) shows how much of the detail leaks into it. The fine accuracy a
model can reach seeing k of a tile's four quarters is ``fine_ceiling(k)`` (40%, 53%, 70% and 100% for 1 to 4;
chance is 20%).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image
from safetensors.torch import load_file

from ...model.processing import load_image
from ..recipe import FULL, Recipe, score
from .arms import GROUPS, LOCAL, Arm
from .runner import data_folder, model_folder
from .stats import run_key
from .upgrade import switch


class Evaluation(NamedTuple):
    """How a probe evaluates the trained weights: with these settings changed, on the test images as they are
    (``global_view_only=False``) or reduced to what the global view holds (``global_view_data``)."""

    settings: dict
    global_view_only: bool = False


class Probe(NamedTuple):
    title: str
    trained: dict[str, Arm]  # label: the arm whose trained models are probed
    evaluated: dict[str, Evaluation]  # label: how the weights are evaluated


PROBES: dict[str, Probe] = {
    "layout": Probe(
        "Table 5: each layout's trained models evaluated under every layout (fine accuracy)",
        {arm.label: arm for arm in GROUPS["v4_table5"].arms},
        {arm.label: Evaluation(dict(arm.settings)) for arm in GROUPS["v4_table5"].arms},
    ),
    "stacks": Probe(
        "Fig. 3c: DeepStack-L trained with 4 stacks, evaluated with the first k injected (fine accuracy)",
        {"llm (4 stacks)": Arm("llm", "llm")},
        {f"{count} stack(s)": Evaluation({"num_stack_layers": count}) for count in (1, 2, 3, 4)},
    ),
    "detail": Probe(
        "Where the detail comes from: the levels group's models on the test images, and on the same images "
        "reduced to what the 32 px global view holds (fine accuracy)",
        {arm.label: arm for arm in GROUPS["levels"].arms if arm.label != "llm, start 0"},
        {"test images": Evaluation({}), "global view only": Evaluation({}, global_view_only=True)},
    ),
}


def global_view_data(data: Path, out: Path, size: int, split: str = "test") -> Path:
    """A copy of ``split`` of the data in ``data`` whose images hold only what the global view holds: each image
    resized to the encoder's ``size`` as the processor makes the global view (bicubic), then back to its own size
    by repeating pixels (nearest), so the hi-res crops carry no detail the global view lacks (the task's images
    are square, so the processor's padding to a square changes nothing). Returns ``out``."""
    records = json.loads((data / f"{split}.json").read_text())
    for record in records:
        target = out / "images" / record["image"]
        target.parent.mkdir(parents=True, exist_ok=True)
        image = load_image(data / "images" / record["image"]).convert("RGB")
        image.resize((size, size), Image.Resampling.BICUBIC).resize(image.size, Image.Resampling.NEAREST).save(target)
    (out / f"{split}.json").write_text(json.dumps(records))
    return out


def trained_model(lab: Path, recipe: Recipe, arm: Arm, seed: int) -> Path:
    """Where the lab in ``lab`` saved the trained model of ``arm`` and ``seed``."""
    return model_folder(lab, run_key(recipe.task, arm), seed) / "trained"


def run_probe(name: str, lab: str | Path, seeds: tuple[int, ...] = (0, 1, 2), recipe: Recipe = FULL.with_task(LOCAL),
              work: str | Path | None = None) -> list[dict]:
    """Probe ``name`` on the models the lab in ``lab`` trained (those of ``seeds`` that exist): a row per trained
    arm, evaluated setting and seed, with the fine and coarse accuracy on the test split. The re-configured
    models go to ``work`` (default ``lab/probes``)."""
    probe, lab = PROBES[name], Path(lab)
    work = Path(work or lab / "probes")
    rows = []
    data = data_folder(lab, recipe.task)
    reduced = (global_view_data(data, work / "global-view-data", recipe.vision_size["image_size"])
               if any(evaluation.global_view_only for evaluation in probe.evaluated.values()) else None)
    for trained, arm in probe.trained.items():
        for seed in seeds:
            model = trained_model(lab, recipe, arm, seed)
            if not (model / "config.json").is_file():
                continue
            for evaluated, (settings, global_view_only) in probe.evaluated.items():
                folder = work / name / f"{arm.key}-seed{seed}" / evaluated.replace(" ", "_")
                scores = score(switch(model, folder, arm.mode, seed, **settings),
                               reduced if global_view_only else data, recipe)
                rows.append({"probe": name, "trained": trained, "evaluated": evaluated, "seed": seed,
                             "fine_accuracy": scores["fine_accuracy"], "coarse_accuracy": scores["coarse_accuracy"],
                             "per_question": scores["per_question"]})
    return rows


def probe_table(name: str, rows: list[dict]) -> str:
    """Markdown: a row per trained arm, a column per evaluated setting, the fine accuracy as mean ± sample std
    over the seeds, and the seeds."""
    probe = PROBES[name]
    rows = [row for row in rows if row["probe"] == name]
    lines = [f"| trained \\ evaluated | {' | '.join(probe.evaluated)} | seeds |",
             "|---|" + "---:|" * len(probe.evaluated) + "---|"]
    for trained in probe.trained:
        mine = [row for row in rows if row["trained"] == trained]
        if not mine:
            continue
        cells = []
        for evaluated in probe.evaluated:
            values = [row["fine_accuracy"] for row in mine if row["evaluated"] == evaluated]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.1%} ± {spread:.1%}" if values else "")
        seeds = ", ".join(str(seed) for seed in sorted({row["seed"] for row in mine}))
        lines.append(f"| {trained} | {' | '.join(cells)} | {seeds} |")
    return "\n".join(lines) + "\n"


def probe_questions(name: str, rows: list[dict]) -> str:
    """Markdown: the accuracy per question (mean over the seeds) of each trained arm under each evaluated
    setting, so that one sees which of the places a model still reads."""
    probe = PROBES[name]
    rows = [row for row in rows if row["probe"] == name]
    questions = list(dict.fromkeys(question for row in rows for question in row["per_question"]))
    lines = [f"| trained | evaluated | {' | '.join(questions)} |", "|---|---|" + "---:|" * len(questions)]
    for trained in probe.trained:
        for evaluated in probe.evaluated:
            mine = [row["per_question"] for row in rows if (row["trained"], row["evaluated"]) == (trained, evaluated)]
            if mine:
                cells = [f"{statistics.fmean(scores[question] for scores in mine):.1%}" for question in questions]
                lines.append(f"| {trained} | {evaluated} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


GATED = {arm.label: arm for arm in GROUPS["gate"].arms if dict(arm.settings).get("stack_gate", "none") != "none"}


def gate_openings(lab: str | Path, seeds: tuple[int, ...] = (0, 1, 2), recipe: Recipe = FULL.with_task(LOCAL)) -> list[dict]:
    """How far the trained gates opened: for each gated arm and seed the lab trained, ``|tanh(g_k)|`` per stack
    (the mean over the channels for ``channel``), read from the saved weights (``stack_transform.gate``)."""
    rows = []
    for label, arm in GATED.items():
        for seed in seeds:
            weights = trained_model(Path(lab), recipe, arm, seed) / "model.safetensors"
            if weights.is_file():
                gate = load_file(weights)["stack_transform.gate"].float()
                rows.append({"arm": label, "seed": seed, "opening": torch.tanh(gate).abs().mean(-1).tolist()})
    return rows


def gates_table(rows: list[dict]) -> str:
    """Markdown: a row per gated arm, ``|tanh(g_k)|`` per stack as the mean over the seeds, and the seeds."""
    stacks = max((len(row["opening"]) for row in rows), default=0)
    lines = [f"| arm | {' | '.join(f'stack {k}' for k in range(stacks))} | seeds |", "|---|" + "---:|" * stacks + "---|"]
    for label in GATED:
        mine = [row for row in rows if row["arm"] == label]
        if mine:
            cells = [f"{statistics.fmean(row['opening'][k] for row in mine):.3f}" for k in range(stacks)]
            seeds = ", ".join(str(row["seed"]) for row in mine)
            lines.append(f"| {label} | {' | '.join(cells)} | {seeds} |")
    return "\n".join(lines) + "\n"

