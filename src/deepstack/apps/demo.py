"""`deepstack demo`: the paper's claim end to end on a CPU (issue 4).

Makes the fine-detail data, trains two models from scratch with identical budget and seed, ``none``
(LLaVA style, N global tokens) and ``llm`` (DeepStack-L: the same N-token context plus 4 stacks of hi-res
tokens), evaluates both on the test split and reports fine / coarse accuracy, context and prefill time.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image

from ..model.builder import build_model, load_pretrained, tiny_tokenizer
from .evaluate import evaluate, prefill_seconds
from .finedetail import QUESTIONS, SPLITS, make_data
from .train.config import DataSection, DataSource, ModelSection, OptimSection, OutputSection, TrainConfig
from .train.loop import train


@dataclass(frozen=True)
class Recipe:
    """Everything a demo or lab run shares: the data sizes, the tiny parts and the training budget."""

    sizes: dict = field(default_factory=lambda: dict(SPLITS))
    # a 32 px CLIP-style encoder with 8 px patches (N = 16 tokens), 6 layers so that DeepStack-V's 4 stacks
    # fit before the feature layer, and an 8-layer Llama-style LLM (room for Fig. 3's start layers/intervals)
    vision_size: dict = field(
        default_factory=lambda: {"image_size": 32, "patch_size": 8, "hidden_size": 64, "num_layers": 6, "num_heads": 4}
    )
    llm_size: dict = field(default_factory=lambda: {"hidden_size": 96, "num_layers": 8})
    steps: int = 800
    batch_size: int = 32
    lr: float = 5e-4
    vision_lr: float = 5e-4
    warmup_ratio: float = 0.05

    def with_steps(self, steps: int | None) -> Recipe:
        return self if steps is None else replace(self, steps=steps)


FULL = Recipe()
QUICK = Recipe(sizes={"train": 600, "val": 60, "test": 150}, steps=60)


def task_tokenizer(data: Path):
    """A tokenizer for the tiny LLM learned from the training conversations, as one would for a new domain."""
    records = json.loads((data / "train.json").read_text())
    return tiny_tokenizer(turn["value"] for record in records for turn in record["conversations"])


def initial_model(mode: str, data: Path, out: Path, seed: int, recipe: Recipe, llm: str = "tiny-llama",
                  **settings) -> Path:
    """Build and save the untrained model of a run: tiny CLIP-style encoder from scratch, and a tiny LLM from
    scratch (with the task tokenizer) or a real pretrained one."""
    tiny = llm.startswith("tiny-")
    torch.manual_seed(seed)
    model, processor = build_model(
        "tiny-clip", llm, vision_size=recipe.vision_size, llm_size=recipe.llm_size if tiny else None,
        tokenizer=task_tokenizer(data) if tiny else None, stack_mode=mode, **settings,
    )
    model.save_pretrained(out / "init")
    processor.save_pretrained(out / "init")
    return out / "init"


def run_config(init: Path, data: Path, out: Path, seed: int, recipe: Recipe, tiny: bool = True) -> TrainConfig:
    """One stage, everything trained (the encoder too: it starts from scratch), the recipe's budget."""
    return TrainConfig(
        stage="finetune",
        model=ModelSection(init_from=str(init), train_vision=True),
        data=DataSection(sources=[DataSource(str(data / "train.json"), str(data / "images"))], num_workers=1),
        optim=OptimSection(
            global_batch_size=recipe.batch_size,
            micro_batch_size=recipe.batch_size if tiny else 8,
            lr=recipe.lr if tiny else recipe.lr / 10,
            vision_lr=recipe.vision_lr,
            warmup_ratio=recipe.warmup_ratio,
            max_steps=recipe.steps,
            precision="fp32",
            seed=seed,
        ),
        output=OutputSection(dir=str(out), save_every=10**9, keep_last=1, log_every=25),
    )


def train_and_evaluate(mode: str, data: Path, out: Path, seed: int, recipe: Recipe = FULL, split: str = "test",
                       llm: str = "tiny-llama", **settings) -> dict:
    """Build, train and evaluate one model; the row of a results table (with every prediction)."""
    started = time.time()
    init = initial_model(mode, data, out, seed, recipe, llm, **settings)
    result = train(run_config(init, data, out, seed, recipe, tiny=llm.startswith("tiny-")))
    model, processor = load_pretrained(out)
    scores = evaluate(model, processor, data / f"{split}.json", data / "images")
    sample = json.loads((data / f"{split}.json").read_text())[0]
    image = Image.open(data / "images" / sample["image"]).convert("RGB")
    config = model.config
    return {
        "mode": mode,
        "settings": settings,
        "seed": seed,
        "split": split,
        "llm_image_tokens": config.image_seq_length,
        "visual_tokens_seen": config.num_visual_tokens_seen,
        "fine_accuracy": scores["accuracy"].get("fine", 0.0),
        "coarse_accuracy": scores["accuracy"].get("coarse", 0.0),
        "per_question": per_question(scores["predictions"]),
        "prefill_ms": 1000 * prefill_seconds(model, processor, image, QUESTIONS["digit"][1]),
        "final_train_loss": result.final_loss,
        "train_seconds": round(result.seconds, 1),
        "total_seconds": round(time.time() - started, 1),
        "predictions": scores["predictions"],
    }


def per_question(predictions: list[dict]) -> dict[str, float]:
    totals, correct = {}, {}
    for prediction in predictions:
        question = prediction["id"].rsplit("-", 1)[1]
        totals[question] = totals.get(question, 0) + 1
        correct[question] = correct.get(question, 0) + prediction["correct"]
    return {question: correct[question] / totals[question] for question in totals}


def demo(out: str | Path = "runs/demo", quick: bool = False, llm: str = "tiny-llama", seed: int = 0,
         steps: int | None = None) -> dict:
    out = Path(out)
    started = time.time()
    recipe = (QUICK if quick else FULL).with_steps(steps)
    if not llm.startswith("tiny-") and steps is None:
        recipe = recipe.with_steps(recipe.steps // 3)  # a real LLM is far slower per step on a CPU
    data = out / "data"
    print(f"demo: writing the fine-detail data ({recipe.sizes}) to {data}")
    make_data(data, seed=seed, sizes=recipe.sizes)
    runs = []
    for mode in ("none", "llm"):
        print(f"demo: training stack_mode={mode} for {recipe.steps} steps (seed {seed})")
        runs.append(train_and_evaluate(mode, data, out / mode, seed, recipe, llm=llm))
        print(f"demo: {mode}: fine {runs[-1]['fine_accuracy']:.1%}, coarse {runs[-1]['coarse_accuracy']:.1%}")
    results = {
        "settings": {"quick": quick, "llm": llm, "seed": seed, "hires_scale": 2, "recipe": asdict(recipe)},
        "runs": [{k: v for k, v in run.items() if k != "predictions"} for run in runs],
        "seconds": round(time.time() - started, 1),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    figure(runs, data, out / "demo.png")
    print_table(results["runs"])
    print(f"demo: {results['seconds']:.0f}s in all; results.json and demo.png in {out}")
    return results


def print_table(runs: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="DeepStack demo: fine-detail task, test split (exact match)")
    questions = list(QUESTIONS)
    for column in ("mode", "context", "visual tokens", "fine", "coarse", *questions, "prefill ms"):
        table.add_column(column, justify="right")
    for run in runs:
        table.add_row(run["mode"], str(run["llm_image_tokens"]), str(run["visual_tokens_seen"]),
                      f"{run['fine_accuracy']:.1%}", f"{run['coarse_accuracy']:.1%}",
                      *(f"{run['per_question'].get(q, 0.0):.1%}" for q in questions), f"{run['prefill_ms']:.1f}")
    console = Console()
    if not console.is_terminal:  # a log file: wide enough for the whole table rather than rich's default 80
        console = Console(width=120)
    console.print(table)
    print("context: image tokens in the LLM's sequence; visual tokens: those it sees in any way; fine = digit and "
          "pattern questions, coarse = colour and shape; prefill: one image and question, batch 1")


def figure(runs: list[dict], data: Path, path: Path, examples: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # a few test images, each twice: as the global view the LLM's sequence gets (32 px) and as the hi-res view the
    # stacks come from (64 px), with one fine question on each and every model's answer
    fine = [p for p in runs[0]["predictions"] if p["kind"] == "fine"]
    images = list(dict.fromkeys(p["id"].rsplit("-", 1)[0] + ".png" for p in fine))[: examples // 2]
    fine = [(p["id"].rsplit("-", 1)[0] + ".png", p) for p in fine if p["id"].rsplit("-", 1)[0] + ".png" in images]
    by_mode = [{p["id"]: p for p in run["predictions"]} for run in runs]
    fig = plt.figure(figsize=(2.6 * examples, 6.4), dpi=110)
    grid = fig.add_gridspec(2, examples, height_ratios=[1.25, 1])
    for column, (image_name, prediction) in enumerate(fine):
        axis = fig.add_subplot(grid[0, column])
        image = Image.open(data / "images" / image_name).convert("RGB")
        global_view = image.resize((image.width // 2, image.height // 2), Image.Resampling.BICUBIC)
        shown = image if column % 2 else global_view.resize(image.size, Image.Resampling.NEAREST)
        axis.imshow(shown, interpolation="nearest")
        axis.set_xticks([]), axis.set_yticks([])
        axis.set_xlabel("hi-res view (64 px)" if column % 2 else "global view (32 px)", fontsize=7.5)
        lines = [prediction["question"], f"right answer: {prediction['answer']}"]
        lines += [f"{run['mode']}: {lookup[prediction['id']]['prediction']!r}" for run, lookup in zip(runs, by_mode)]
        axis.set_title("\n".join(lines), fontsize=7.5)
    axis = fig.add_subplot(grid[1, :])
    names = ["fine", "coarse", *QUESTIONS]
    width = 0.8 / len(runs)
    for index, run in enumerate(runs):
        values = [run["fine_accuracy"], run["coarse_accuracy"], *(run["per_question"].get(q, 0.0) for q in QUESTIONS)]
        bars = axis.bar([k + index * width for k in range(len(names))], values, width, label=run["mode"])
        axis.bar_label(bars, labels=[f"{v:.0%}" for v in values], fontsize=7)
    labels = ["fine questions", "coarse questions", *(f"{q} ({QUESTIONS[q][0]})" for q in QUESTIONS)]
    axis.set_xticks([k + width * (len(runs) - 1) / 2 for k in range(len(names))], labels, fontsize=8)
    axis.set_ylim(0, 1.12), axis.set_ylabel("exact-match accuracy (test)"), axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
