"""The recipe the demo and the lab share: the task, data sizes, tiny parts, training budget, and one run of it
(build, train, evaluate) as the row of a results table, with its learning curve and where its time went when
asked."""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from ..eval.metrics import accuracy
from ..eval.runner import evaluate
from ..model.builder import build_model, load_pretrained
from ..model.processing import load_image
from ..model.tiny import tiny_tokenizer
from ..train.config import DataSection, DataSource, ModelSection, OptimSection, OutputSection, TrainConfig
from ..train.loop import train
from ..utils.device import synchronize
from ..utils.timing import median_seconds
from .tasks import DEFAULT_TASK, get_task


@dataclass(frozen=True)
class Recipe:
    """Everything a demo or lab run shares: the task, the data sizes, the tiny parts and the training budget."""

    sizes: dict = field(default_factory=lambda: dict(get_task(DEFAULT_TASK).SPLITS))
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
    questions: tuple[str, ...] | None = None  # the questions of the data (train turns, val/test records); None: all
    task: str = DEFAULT_TASK  # a name of research.tasks.TASKS
    projector_lr: float | None = None  # the projector(s) and stack weights' lr (optim.projector_lr); None: lr
    curve_every: int | None = None  # validation accuracy every this many steps (the learning curve); None: none
    time_phases: bool = False  # measure where the training time goes (data, vision, LLM; see PhaseTimer)
    compile: bool = False  # torch.compile each layer for training (optim.compile): the same runs, faster steps
    # stop a run on a plateau of its learning curve's validation fine accuracy (see plateau_point); needs curve_every
    stop_on_plateau: bool = False

    # how a run is carried out, not what it computes: runs that differ only in these are the same runs
    EXECUTION = ("time_phases", "compile")

    def __post_init__(self):
        task = get_task(self.task)
        if self.questions is None:
            object.__setattr__(self, "questions", tuple(task.QUESTIONS))
        unknown = [question for question in self.questions if question not in task.QUESTIONS]
        if unknown:
            raise ValueError(f"Recipe.questions: {', '.join(unknown)} not a question of the {self.task} task; "
                             f"choose from {', '.join(task.QUESTIONS)}")
        if self.curve_every is not None and self.curve_every < 1:
            raise ValueError(f"Recipe.curve_every={self.curve_every}: must be >= 1 (steps), or None for no curve")
        if self.stop_on_plateau and self.curve_every is None:
            raise ValueError("Recipe.stop_on_plateau: a plateau is one of the learning curve's; set curve_every "
                             "(steps between its points) too")

    def identity(self) -> dict:
        """What a run of this recipe computes, as it reads back from JSON (tuples become lists): the recipe
        without its execution options, to tell which runs are the same (see ``identity_of``)."""
        return self.identity_of(json.loads(json.dumps(asdict(self))))

    @classmethod
    def identity_of(cls, fields: dict) -> dict:
        """A recipe's fields (as a run record keeps them) without its execution options (``EXECUTION``)."""
        return {name: value for name, value in fields.items() if name not in cls.EXECUTION}

    def with_steps(self, steps: int | None) -> Recipe:
        return self if steps is None else replace(self, steps=steps)

    def with_task(self, task: str) -> Recipe:
        """This recipe on another task, asking all of that task's questions (the same recipe on its own task)."""
        return self if task == self.task else replace(self, task=task, questions=None)


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
            projector_lr=recipe.projector_lr,
            warmup_ratio=recipe.warmup_ratio,
            max_steps=recipe.steps,
            precision="fp32",
            compile=recipe.compile,
            seed=seed,
        ),
        output=OutputSection(dir=str(out), save_every=10**9, keep_last=1, log_every=25),
    )


def train_and_evaluate(mode: str, data: Path, out: Path, seed: int, recipe: Recipe = FULL, split: str = "test",
                       llm: str = "tiny-llama", **settings) -> dict:
    """Build, train and evaluate one model; the row of a results table (with every prediction). The untrained
    model goes to ``out/init`` and the trained one to ``out/trained``; a run in the same folder starts over.
    With ``recipe.curve_every`` the row holds the learning curve (``curve``) and ``train_seconds`` leaves out
    its evaluations; with ``recipe.time_phases`` it holds ``phase_seconds`` (see ``PhaseTimer``)."""
    started = time.time()
    init = initial_model(mode, data, out, seed, recipe, llm, **settings)
    config = run_config(init, data, out / "trained", seed, recipe, tiny=llm.startswith("tiny-"))
    return {"mode": mode, "settings": settings, **train_and_score(config, data, recipe, split, started)}


def train_and_score(config: TrainConfig, data: Path, recipe: Recipe, split: str = "test",
                    started: float | None = None) -> dict:
    """Train ``config`` (see ``train_recipe``), then evaluate the trained model on ``split``: the fields of a
    results row that do not depend on how the model was made."""
    started = time.time() if started is None else started
    trained = train_recipe(config, data, recipe)
    evaluated = time.time()
    scores = score(trained.result.output_dir, data, recipe, split)
    return {"seed": config.optim.seed, **scores, "final_train_loss": trained.result.final_loss,
            "steps": trained.result.steps, "max_steps": config.optim.max_steps,
            "train_seconds": round(trained.train_seconds, 2), "eval_seconds": round(time.time() - evaluated, 2),
            "total_seconds": round(time.time() - started, 2), **trained.extras()}


@dataclass
class Trained:
    """A finished training: accelerate's result, and the learning curve and phase times when they were asked."""

    result: object  # train.loop.TrainResult
    curve: list[dict] | None = None
    curve_eval_seconds: float = 0.0
    phase_seconds: dict | None = None

    @property
    def train_seconds(self) -> float:
        """The training's time without the learning curve's evaluations."""
        return self.result.seconds - self.curve_eval_seconds

    def extras(self) -> dict:
        extras = {}
        if self.curve is not None:
            extras.update(curve=self.curve, curve_eval_seconds=round(self.curve_eval_seconds, 1))
        if self.phase_seconds is not None:
            extras["phase_seconds"] = self.phase_seconds
        return extras


def train_recipe(config: TrainConfig, data: Path, recipe: Recipe) -> Trained:
    """Train ``config`` with the recipe's learning curve (``curve_every``) and phase timer (``time_phases``) on
    when it asks for them."""
    curve = LearningCurve(recipe, data, config.model.init_from) if recipe.curve_every else None
    with PhaseTimer() as timer:
        callbacks = () if curve is None else (curve,)
        if recipe.time_phases:
            callbacks = (timer.end_step, *callbacks, timer.next_step)
        if curve is not None:
            curve.start(time.time())
        result = train(config, overwrite=True, callbacks=callbacks)
    return Trained(result, curve.points if curve else None, curve.eval_seconds if curve else 0.0,
                   timer.summary() if recipe.time_phases else None)


def score(model_dir: Path, data: Path, recipe: Recipe, split: str = "test") -> dict:
    """A trained model's context, accuracy on ``split`` (fine, coarse, per question, every prediction) and
    prefill time."""
    model, processor = load_pretrained(model_dir)
    scores = evaluate(model, processor, data / f"{split}.json", data / "images")
    sample = json.loads((data / f"{split}.json").read_text())[0]
    image = load_image(data / "images" / sample["image"])
    return {
        "split": split,
        "llm_image_tokens": model.config.image_seq_length,
        "visual_tokens_seen": model.config.num_visual_tokens_seen,
        "fine_accuracy": scores["accuracy"].get("fine", 0.0),
        "coarse_accuracy": scores["accuracy"].get("coarse", 0.0),
        "per_question": per_question(scores["predictions"]),
        "prefill_ms": prefill_ms(model, processor, image, get_task(recipe.task).QUESTIONS[sample["question"]][1]),
        "predictions": scores["predictions"],
    }


PLATEAU_PATIENCE, PLATEAU_GAIN = 3, 0.01  # curve points without a rise of 1 point of fine accuracy


def plateau_point(curve: list[dict], patience: int = PLATEAU_PATIENCE, gain: float = PLATEAU_GAIN) -> int | None:
    """Where a learning curve reaches a plateau: the index of its first point that ends ``patience`` points in a
    row without the validation fine accuracy rising ``gain`` above its best so far (the untrained step-0 point
    does not count); None when none does."""
    best, flat = None, 0
    for index, point in enumerate(curve[1:], start=1):
        if best is None or point["fine"] >= best + gain:
            best, flat = point["fine"], 0
        else:
            flat += 1
        if flat == patience:
            return index
    return None


class LearningCurve:
    """A training callback: validation accuracy (fine, coarse, per question) every ``recipe.curve_every`` steps
    and after the last, with the training time so far without these evaluations. The first point (step 0) is
    the untrained model, evaluated before the clock starts. With ``recipe.stop_on_plateau`` it stops the training
    at the point where the curve reaches a plateau (``plateau_point``)."""

    def __init__(self, recipe: Recipe, data: Path, init: str | Path):
        self.every, self.last, self.stop_on_plateau = recipe.curve_every, recipe.steps, recipe.stop_on_plateau
        self.records, self.images = data / "val.json", data / "images"
        model, self.processor = load_pretrained(init)
        self.points = [self._point(0, model, 0.0)]
        self.eval_seconds = 0.0
        self.started = time.time()

    def start(self, clock: float) -> None:
        """The training clock starts now (``train`` is called): setup counts as training time, as in
        ``TrainResult.seconds``."""
        self.started = clock

    def __call__(self, step: int, model) -> bool:
        """Whether to stop the training (see ``train.loop.train``)."""
        if step % self.every and step != self.last:
            return False
        began = time.time()
        self.points.append(self._point(step, model, began - self.started - self.eval_seconds))
        self.eval_seconds += time.time() - began
        return self.stop_on_plateau and plateau_point(self.points) is not None

    def _point(self, step: int, model, seconds: float) -> dict:
        scores = evaluate(model, self.processor, self.records, self.images, progress=False)
        return {"step": step, "fine": scores["accuracy"].get("fine", 0.0),
                "coarse": scores["accuracy"].get("coarse", 0.0), "per_question": per_question(scores["predictions"]),
                "train_seconds_so_far": round(seconds, 2)}


class PhaseTimer:
    """Where the training time goes, per optimizer step, measured with hooks on the model and the optimizer:

    - ``data``: from the end of one step to the first forward of the next (waiting for the batch, moving it);
    - ``vision_forward``: the vision tower's forward (all views);
    - ``llm_forward`` / ``llm_backward``: the LLM's forward (with the stacks' injection), and its backward, from
      the gradient of its logits to that of its input embeddings;
    - ``optimizer``: the optimizer's step;
    - ``other``: the rest of the step: the loss, the projector's and the vision tower's backward, clipping;

    and, apart from the per-step means, ``until_first_step``: the seconds from entering the timer (just before
    ``train``) to the end of the first step: the training's set-up, the data checks, compiling and that step.

    Its two training callbacks go around the others: ``end_step`` first, ``next_step`` last, so that another
    callback's work (a learning-curve evaluation) is no phase. The hooks go on when the callbacks first see the
    model, so the first step is not counted. Each mark waits for the device: the phases are what it spent."""

    PHASES = ("data", "vision_forward", "llm_forward", "llm_backward", "optimizer", "other")

    def __init__(self):
        self.model, self.handles = None, []
        self.seconds = dict.fromkeys(self.PHASES, 0.0)
        self.steps, self.step_seconds, self.marks = 0, 0.0, {}
        self.entered, self.until_first_step = time.perf_counter(), 0.0

    def __enter__(self) -> PhaseTimer:
        self.entered = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def end_step(self, step: int, model) -> None:
        if self.model is None:
            self._attach(model)
            self.until_first_step = self._now() - self.entered
        elif "step" in self.marks:
            self.steps += 1
            self.step_seconds += self._since("step")
        self.marks.clear()

    def next_step(self, step: int, model) -> None:
        self.marks["step"] = self.marks["data"] = self._now()

    def summary(self) -> dict:
        """Mean seconds per step of each phase over the ``steps`` timed, and of the whole ``step``; the seconds
        ``until_first_step``."""
        steps = max(self.steps, 1)
        measured = {phase: self.seconds[phase] / steps for phase in self.PHASES if phase != "other"}
        step = self.step_seconds / steps
        rounded = {key: round(value, 5) for key, value in measured.items()}
        return {"steps": self.steps, "step": round(step, 5), **rounded, "other": round(step - sum(measured.values()), 5),
                "until_first_step": round(self.until_first_step, 2)}

    def _now(self) -> float:
        synchronize(next(self.model.parameters()).device)
        return time.perf_counter()

    def _since(self, mark: str) -> float:
        return self._now() - self.marks.pop(mark)

    def _close(self, phase: str, mark: str | None = None) -> None:
        """Add the time since ``mark`` (default: the phase's own) to ``phase``, if the mark was set while training."""
        mark = mark or phase
        if self.model.training and mark in self.marks:
            self.seconds[phase] += self._since(mark)

    def _open(self, mark: str) -> None:
        if self.model.training:
            self.marks[mark] = self._now()

    def _attach(self, model) -> None:
        self.model = model

        def vision_start(module, args):
            self._close("data")  # the first forward of the step; later micro-batches find the mark gone
            self._open("vision_forward")

        def llm_start(module, args, kwargs):
            self._open("llm_forward")
            embeds = kwargs.get("inputs_embeds")
            if self.model.training and embeds is not None and embeds.requires_grad:
                embeds.register_hook(lambda grad: self._close("llm_backward"))

        def llm_end(module, args, kwargs, output):
            self._close("llm_forward")
            logits = getattr(output, "logits", None)
            if self.model.training and logits is not None and logits.requires_grad:
                logits.register_hook(lambda grad: self._open("llm_backward"))

        self.handles += [
            model.vision_tower.register_forward_pre_hook(vision_start),
            model.vision_tower.register_forward_hook(lambda *_: self._close("vision_forward")),
            model.language_model.register_forward_pre_hook(llm_start, with_kwargs=True),
            model.language_model.register_forward_hook(llm_end, with_kwargs=True),
            register_optimizer_step_pre_hook(lambda *_: self._open("optimizer")),
            register_optimizer_step_post_hook(lambda *_: self._close("optimizer")),
        ]


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
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
        futures = [pool.submit(fn, *job, threads=threads) for job in jobs]
        for future in concurrent.futures.as_completed(futures):
            yield future.result()


def exit_with_parent(parent: int, every: float = 1.0) -> None:
    """In a worker process: end it once the process ``parent`` that started it is gone. A parent killed with
    SIGKILL cannot stop its workers, which would otherwise go on training, share the cores with a restarted lab
    and write into the folders of the runs it starts again."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


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

