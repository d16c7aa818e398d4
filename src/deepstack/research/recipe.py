"""The recipe the demo and the lab share: data sizes, tiny parts, training budget, and one run of it
(build, train, evaluate) as the row of a results table."""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..eval.metrics import accuracy
from ..eval.runner import evaluate
from ..model.builder import build_model, load_pretrained
from ..model.processing import load_image
from ..model.tiny import tiny_tokenizer
from ..train.config import DataSection, DataSource, ModelSection, OptimSection, OutputSection, TrainConfig
from ..train.loop import train
from ..utils.timing import median_seconds
from .tasks.finedetail import QUESTIONS, SPLITS


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
    questions: tuple[str, ...] = tuple(QUESTIONS)  # the question kinds of the data (train turns, val/test records)

    def with_steps(self, steps: int | None) -> Recipe:
        return self if steps is None else replace(self, steps=steps)


FULL = Recipe()
# about 3 minutes on 2 CPU cores: the pattern (fine) and colour (coarse) questions only, half-width parts at the same
# depths (the lab's arms still fit), batch 16 and a higher lr: llm reads the pattern from step ~300-350 on seeds
# 0, 1 and 2 (800 steps left seed 0 to ~600, batch 32 x 500 steps missed on seed 1)
QUICK = Recipe(
    sizes={"train": 1000, "val": 10, "test": 150},
    vision_size={"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 6, "num_heads": 2},
    llm_size={"hidden_size": 64, "num_layers": 8},
    steps=1000, batch_size=16, lr=1e-3, vision_lr=2e-3, questions=("pattern", "colour"),
)


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
        data=DataSection(
            sources=[DataSource(path=str(data / "train.json"), image_folder=str(data / "images"))], num_workers=1
        ),
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
    """Build, train and evaluate one model; the row of a results table (with every prediction). The untrained
    model goes to ``out/init`` and the trained one to ``out/trained``; a run in the same folder starts over."""
    started = time.time()
    init = initial_model(mode, data, out, seed, recipe, llm, **settings)
    trained = out / "trained"
    result = train(run_config(init, data, trained, seed, recipe, tiny=llm.startswith("tiny-")), overwrite=True)
    model, processor = load_pretrained(trained)
    scores = evaluate(model, processor, data / f"{split}.json", data / "images")
    sample = json.loads((data / f"{split}.json").read_text())[0]
    image = load_image(data / "images" / sample["image"])
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
        "prefill_ms": prefill_ms(model, processor, image, QUESTIONS[sample["question"]][1]),
        "final_train_loss": result.final_loss,
        "train_seconds": round(result.seconds, 1),
        "total_seconds": round(time.time() - started, 1),
        "predictions": scores["predictions"],
    }


def per_question(predictions: list[dict]) -> dict[str, float]:
    """Accuracy per question of the task (the ``question`` field of its records)."""
    scores = accuracy(predictions, by="question")
    scores.pop("all")
    return scores


@torch.inference_mode()
def prefill_ms(model, processor, image, question: str) -> float:
    """Median time of one prefill forward (vision side included) for one image and question, batch 1."""
    inputs = processor(images=image, text=f"{processor.image_token}\n{question}").to(model.device)
    return 1000 * median_seconds(lambda: model(**inputs), model.device)


def in_processes(fn: Callable, jobs: list[tuple], workers: int) -> Iterator:
    """``fn(*job)`` for each job: here one after another (``workers`` <= 1), or ``workers`` at a time in spawned
    processes that share the cores, each called with ``threads=`` its share; yields the results as they finish."""
    if workers <= 1:
        for job in jobs:
            yield fn(*job)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(fn, *job, threads=threads) for job in jobs]
        for future in concurrent.futures.as_completed(futures):
            yield future.result()


@contextmanager
def worker_output(folder: Path, threads: int | None) -> Iterator[None]:
    """In a worker process (``threads`` given): its share of the cores, and its output in ``folder/run.log`` so that
    parallel runs do not interleave their progress bars. Here (``None``): nothing changes."""
    if threads is None:
        yield
        return
    torch.set_num_threads(threads)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "run.log", "w") as stream, redirect_stdout(stream), redirect_stderr(stream):
        yield

