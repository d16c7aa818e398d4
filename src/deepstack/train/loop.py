"""The training loop: LLaVA's two stages on accelerate (DDP, FSDP, DeepSpeed through `accelerate launch`).

One optimizer step = one global batch of ``global_batch_size`` samples, split into micro-batches of
``micro_batch_size`` over processes and gradient-accumulation steps. The loss is the mean over every answer
token of the global batch (not a mean of micro-batch means), so one process with accumulation and several
processes without it compute the same number. The data order is a pure function of (seed, step), which is
what makes a resumed run continue exactly where the interrupted one was.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, broadcast, set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ..model.builder import build_model, load_pretrained
from ..utils.device import bf16_available, pick_device
from .checkpoint import remove_partial, resume_step, save_checkpoint, truncate_metrics
from .config import ModelSection, OptimSection, TrainConfig, config_to_dict
from .data import IGNORE_INDEX, Collator, LlavaDataset, Problem, mix, validate
from .folder import METRICS, RUN_CONFIG, claim_output
from .report import plot_loss


class DataError(ValueError):
    """Invalid records stop the run before training; the message lists each with file, place and reason."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = "\n".join(f"  {problem}" for problem in problems)
        super().__init__(
            f"{len(problems)} invalid record(s); fix them, or pass --data.skip_invalid=true to skip them:\n{lines}"
        )


class GlobalBatchSampler(torch.utils.data.Sampler):
    """This process's micro-batches, in order, for steps ``start_step .. total_steps - 1``.

    Step s uses global batch ``s mod steps_per_epoch`` of the permutation seeded by (seed, epoch); its
    ``world * accumulation`` micro-batches go round-robin to the processes.
    """

    def __init__(self, size, global_batch, micro_batch, world, rank, seed, start_step, total_steps):
        self.size, self.global_batch, self.micro_batch = size, global_batch, micro_batch
        self.world, self.rank, self.seed = world, rank, seed
        self.start_step, self.total_steps = start_step, total_steps
        self.steps_per_epoch = size // global_batch

    def __iter__(self):
        permutation, epoch = None, -1
        for step in range(self.start_step, self.total_steps):
            if step // self.steps_per_epoch != epoch:
                epoch = step // self.steps_per_epoch
                generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
                permutation = torch.randperm(self.size, generator=generator).tolist()
            begin = (step % self.steps_per_epoch) * self.global_batch
            batch = permutation[begin : begin + self.global_batch]
            micro = [batch[i : i + self.micro_batch] for i in range(0, self.global_batch, self.micro_batch)]
            yield from micro[self.rank :: self.world]

    def __len__(self):
        return (self.total_steps - self.start_step) * (self.global_batch // self.micro_batch) // self.world


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    final_loss: float | None
    seconds: float


@dataclass(frozen=True)
class StepPlan:
    """The run's length in optimizer steps, and how each step's global batch is split."""

    total: int  # optimizer steps of the whole run
    per_epoch: int  # global batches in one pass over the data
    accumulation: int  # micro-batches each process runs per optimizer step


def train(config: TrainConfig, resume: bool = False, overwrite: bool = False,
          callbacks: Sequence[Callable[[int, torch.nn.Module], None]] = ()) -> TrainResult:
    """One stage of the recipe, from its config to the trained model in ``config.output.dir``.

    A folder that holds a run already is refused before the model is built, unless ``resume`` (continue
    that run from its newest checkpoint; same config but for the step budget) or ``overwrite`` (delete it).
    ``callbacks``: each is called after every optimizer step, on the main process, with the number of steps
    done and the unwrapped model (e.g. to evaluate it); the model is put back in train mode after them. A
    callback that returns ``True`` stops the training after that step (e.g. on a plateau of a validation
    score): every process stops there, and the model of that step is saved as the trained model, its step in
    ``summary.json`` and the result (resuming the run trains on to ``optim.max_steps``).
    """
    started = time.time()
    accelerator = setup_accelerator(config)
    with claim_output(config, accelerator, resume=resume, overwrite=overwrite):
        set_seed(config.optim.seed)  # before the model: its new parts (projector, LoRA) start from the seed
        model, processor = setup_model(config)
        dataset, skipped = setup_data(config, processor, accelerator)
        plan = plan_steps(config.optim, len(dataset), accelerator.num_processes)
        optimizer, scheduler = setup_optimizer(model, config.optim, plan.total)
        model, optimizer = accelerator.prepare(model, optimizer)
        start_step = resume_from(config, accelerator, scheduler, plan) if resume else 0
        prepare_output(config, accelerator, start_step)
        loader = setup_loader(config, dataset, processor, accelerator, start_step, plan.total)
        loss, done = run_steps(config, accelerator, model, optimizer, scheduler, processor, loader, plan, start_step,
                               callbacks)
        return finish(config, accelerator, model, processor, scheduler, done, loss, started, skipped)


def setup_accelerator(config: TrainConfig) -> Accelerator:
    """accelerate for this launch (one process, or several under ``accelerate launch`` / torchrun)."""
    optim = config.optim
    for tracker in config.output.report_to:
        if importlib.util.find_spec(tracker) is None:
            raise ValueError(f"output.report_to lists {tracker}, which is not installed: pip install {tracker}")
    accelerator = Accelerator(
        cpu=torch.accelerator.current_accelerator() is None,  # lets torchrun's processes use gloo on a CPU machine
        mixed_precision=_precision(optim.precision),
        log_with=config.output.report_to or None,
        project_dir=str(Path(config.output.dir)),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],  # text-only batches
    )
    if optim.global_batch_size % (optim.micro_batch_size * accelerator.num_processes):
        raise ValueError(
            f"optim.global_batch_size={optim.global_batch_size} is not a multiple of micro_batch_size "
            f"{optim.micro_batch_size} x {accelerator.num_processes} process(es)"
        )
    return accelerator


def _precision(name: str) -> str:
    if name == "auto":
        return "bf16" if bf16_available(pick_device()) else "no"  # bf16 where the GPU has it
    return {"fp32": "no"}.get(name, name)


def load_base_model(section: ModelSection):
    """The run's starting model and processor: a saved DeepStack model, or one assembled from parts."""
    if section.init_from:
        if section.settings:
            raise ValueError("model.settings cannot change a model loaded with model.init_from; drop one of them")
        return load_pretrained(section.init_from)
    return build_model(
        section.vision, section.llm, vision_size=section.vision_size, llm_size=section.llm_size, **section.settings
    )


def setup_model(config: TrainConfig):
    """The starting model with the stage's parts trainable: pretrain the projector; finetune the LLM too,
    in full or through LoRA adapters; the vision encoder when ``model.train_vision``."""
    section = config.model
    model, processor = load_base_model(section)
    finetune = config.stage == "finetune"
    model.set_trainable(vision=section.train_vision, projector=True, language=finetune and section.lora is None)
    if section.lora is not None:
        from peft import LoraConfig, get_peft_model

        lora = section.lora
        model.language_model = get_peft_model(
            model.language_model,
            LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules),
        )
    if config.optim.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if config.optim.compile:
        if not hasattr(torch.compiler, "set_stance"):
            raise ValueError(f"optim.compile needs torch>=2.6 (this is {torch.__version__}); upgrade torch or set "
                             "optim.compile: false")
        model.compile_layers()
    return model, processor


def setup_data(config: TrainConfig, processor, accelerator: Accelerator) -> tuple[LlavaDataset, int]:
    """The sources' valid records, mixed by weight, and how many invalid ones were skipped. Invalid records
    stop the run before step 1, unless ``data.skip_invalid``: then they are listed in invalid_records.jsonl."""
    data, output_dir = config.data, Path(config.output.dir)
    items, problems = validate(data.sources, processor, config.stage, data.max_length)
    if problems and not data.skip_invalid:
        raise DataError(problems)
    output_dir.mkdir(parents=True, exist_ok=True)
    if problems and accelerator.is_main_process:
        with open(output_dir / "invalid_records.jsonl", "w") as log:
            for problem in problems:
                log.write(json.dumps(problem.__dict__) + "\n")
        print(f"skipped {len(problems)} invalid record(s); the list is in {output_dir / 'invalid_records.jsonl'}")
    return LlavaDataset(mix(items, data.sources, config.optim.seed), processor), len(problems)


def plan_steps(optim: OptimSection, dataset_size: int, world: int) -> StepPlan:
    """``optim.max_steps``, else ``optim.epochs`` passes over the data; a partial last global batch is dropped."""
    steps_per_epoch = dataset_size // optim.global_batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"{dataset_size} valid record(s), fewer than one global batch (optim.global_batch_size="
            f"{optim.global_batch_size})"
        )
    total = optim.max_steps or math.ceil(optim.epochs * steps_per_epoch)
    return StepPlan(total, steps_per_epoch, optim.global_batch_size // (optim.micro_batch_size * world))


def setup_optimizer(model, optim: OptimSection, total_steps: int):
    """AdamW over the trainable parameters and a cosine schedule. The vision encoder learns at ``vision_lr``, the
    LLM at ``lr``, and the parts between them (the projector(s) and the stack settings' weights) at
    ``projector_lr``, or at ``lr`` when it is unset."""
    groups: dict[tuple[float, float], list] = {}
    projector_lr = optim.lr if optim.projector_lr is None else optim.projector_lr
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.startswith("vision_tower."):
            lr = optim.vision_lr
        elif name.startswith("language_model."):
            lr = optim.lr
        else:
            lr = projector_lr
        decay = optim.weight_decay if parameter.dim() >= 2 else 0.0  # no decay on biases and norms
        groups.setdefault((lr, decay), []).append(parameter)
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen")
    optimizer = torch.optim.AdamW([{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()])
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(optim.warmup_ratio * total_steps), total_steps)
    return optimizer, scheduler


def resume_from(config: TrainConfig, accelerator: Accelerator, scheduler, plan: StepPlan) -> int:
    """The step the newest checkpoint was saved after, its state loaded (0 when there is none)."""
    start_step = resume_step(accelerator, scheduler, Path(config.output.dir))
    if start_step > plan.total:
        raise ValueError(
            f"output.dir={config.output.dir}: the newest checkpoint is at step {start_step}, past this config's "
            f"{plan.total} steps; raise optim.max_steps (or optim.epochs) to at least that to resume it"
        )
    return start_step


def prepare_output(config: TrainConfig, accelerator: Accelerator, start_step: int) -> None:
    """The output folder of a run that starts, or resumes, at ``start_step``: the metrics log cut back to
    it, the config saved beside the model, interrupted saves removed, trackers started."""
    output_dir = Path(config.output.dir)
    metrics_path = output_dir / METRICS
    if accelerator.is_main_process:
        if start_step:
            truncate_metrics(metrics_path, start_step)
        else:
            metrics_path.unlink(missing_ok=True)
        (output_dir / RUN_CONFIG).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
        remove_partial(output_dir)
    if config.output.report_to:
        accelerator.init_trackers("deepstack", config=_flat(config_to_dict(config)))


def setup_loader(config: TrainConfig, dataset, processor, accelerator, start_step: int, total_steps: int):
    """This process's micro-batches for steps ``start_step .. total_steps - 1`` (see GlobalBatchSampler)."""
    optim = config.optim
    sampler = GlobalBatchSampler(
        len(dataset), optim.global_batch_size, optim.micro_batch_size, accelerator.num_processes,
        accelerator.process_index, optim.seed, start_step, total_steps,
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=Collator(processor.tokenizer.pad_token_id or 0),
        num_workers=config.data.num_workers,
        persistent_workers=False,
    )


def run_steps(config, accelerator, model, optimizer, scheduler, processor, loader, plan: StepPlan, start_step: int,
              callbacks: Sequence[Callable] = ()):
    """Optimizer steps ``start_step .. plan.total - 1``, logged every ``output.log_every`` and checkpointed
    every ``output.save_every``, each followed by the ``callbacks``, until one of them returns ``True``; the
    last step's loss (None when no step was left to run) and the number of steps done."""
    output = config.output
    batches = iter(loader)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    progress = tqdm(
        total=plan.total, initial=start_step, disable=not accelerator.is_main_process, desc=config.stage, unit="step"
    )
    loss, window, done = None, (time.time(), start_step), start_step
    for step in range(start_step, plan.total):
        micro_batches = [next(batches) for _ in range(plan.accumulation)]
        loss, grad_norm = train_step(accelerator, model, optimizer, scheduler, micro_batches, trainable,
                                     config.optim.max_grad_norm)
        done = step + 1
        logged = done % output.log_every == 0 or done == plan.total
        if logged:
            window = _log_step(config, accelerator, scheduler, plan, progress, done, loss, grad_norm, window)
        progress.update(1)
        if callbacks and _run_callbacks(config, accelerator, model, callbacks, done):
            if not logged:  # the run's last step is logged
                _log_step(config, accelerator, scheduler, plan, progress, done, loss, grad_norm, window)
            break
        if done % output.save_every == 0 and done != plan.total:  # the final save is finish's
            save_checkpoint(accelerator, processor, scheduler, config_to_dict(config), Path(output.dir), done,
                            output.keep_last)
    progress.close()
    return loss, done


def _log_step(config, accelerator, scheduler, plan: StepPlan, progress, done: int, loss: float, grad_norm: float,
              window: tuple[float, int]) -> tuple[float, int]:
    """Log step ``done`` (a line of metrics.jsonl, see ``log_metrics``), its throughput over the steps since
    ``window`` (the time and step of the previous line); the next window."""
    began, since = window
    elapsed = time.time() - began
    metrics = {
        "step": done,
        "epoch": round(done / plan.per_epoch, 4),
        "loss": loss,
        "lr": scheduler.get_last_lr()[0],
        "grad_norm": grad_norm,
        "samples_per_s": round((done - since) * config.optim.global_batch_size / max(elapsed, 1e-9), 2),
    }
    now = time.time()
    log_metrics(config, accelerator, metrics, progress)
    return now, done


def _run_callbacks(config, accelerator, model, callbacks: Sequence[Callable], done: int) -> bool:
    """The callbacks after step ``done``, on the main process; whether one of them asked to stop (every process
    gets the answer)."""
    stop = False
    if accelerator.is_main_process:
        # compiled layers (optim.compile) run as written in a callback's evaluation: no graphs for its shapes
        with torch.compiler.set_stance("force_eager") if config.optim.compile else nullcontext():
            for callback in callbacks:
                stop |= callback(done, accelerator.unwrap_model(model)) is True
        model.train()  # a callback may have evaluated the model
    if accelerator.num_processes > 1:
        stop = bool(broadcast(torch.tensor([int(stop)], device=accelerator.device)).item())
    return stop


def train_step(accelerator, model, optimizer, scheduler, micro_batches, trainable, max_grad_norm: float):
    """One optimizer step on one global batch; its loss and the gradient norm before clipping.

    Each micro-batch's loss is a sum over its answer tokens divided by the global batch's answer-token count
    (``num_items_in_batch``), so the micro-batches' losses add up to the global batch's mean.
    """
    world = accelerator.num_processes
    answer_tokens = sum((batch["labels"][:, 1:] != IGNORE_INDEX).sum() for batch in micro_batches)
    answer_tokens = accelerator.reduce(answer_tokens.to(accelerator.device), "sum").clamp(min=1)
    step_loss = torch.zeros((), device=accelerator.device)
    for index, batch in enumerate(micro_batches):
        batch = {key: value.to(accelerator.device) for key, value in batch.items()}
        sync = index == len(micro_batches) - 1  # gradients cross processes once, after the last micro-batch
        with (nullcontext() if sync else accelerator.no_sync(model)), accelerator.autocast():
            loss = model(**batch, num_items_in_batch=answer_tokens, use_cache=False).loss  # no KV cache to fill
        accelerator.backward(loss * world)  # DDP averages gradients over processes; we want their sum
        step_loss += loss.detach()
    grad_norm = accelerator.clip_grad_norm_(trainable, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return accelerator.reduce(step_loss, "sum").item(), float(grad_norm)


def log_metrics(config: TrainConfig, accelerator: Accelerator, metrics: dict, progress) -> None:
    """A line of metrics.jsonl, the progress bar's numbers and the trackers' point."""
    if accelerator.is_main_process:
        with open(Path(config.output.dir) / METRICS, "a") as log:
            log.write(json.dumps(metrics) + "\n")
        progress.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}", sps=metrics["samples_per_s"])
    if config.output.report_to:
        accelerator.log(metrics, step=metrics["step"])


def finish(config, accelerator, model, processor, scheduler, steps: int, loss, started: float, skipped: int):
    """The last checkpoint (of step ``steps``, the last done), the model in the output folder, the loss curve
    and summary.json."""
    output_dir = Path(config.output.dir)
    save_checkpoint(accelerator, processor, scheduler, config_to_dict(config), output_dir, steps,
                    config.output.keep_last)
    if loss is None:  # a finished run resumed: no step left to run; its last logged loss
        loss = _last_logged_loss(output_dir / METRICS)
    _save_final(accelerator, model, processor, output_dir)
    accelerator.end_training()
    seconds = time.time() - started
    if accelerator.is_main_process:
        plot_loss(output_dir / METRICS, output_dir / "loss.png")
        summary = {"steps": steps, "seconds": round(seconds, 1), "final_loss": loss,
                   "model": str(output_dir), "skipped_records": skipped}
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return TrainResult(output_dir, steps, loss, seconds)


def _save_final(accelerator, model, processor, output_dir: Path) -> None:
    """The output folder itself loads with DeepStackForConditionalGeneration.from_pretrained (LoRA merged)."""
    accelerator.wait_for_everyone()
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        if hasattr(final.language_model, "merge_and_unload"):  # LoRA: fold the adapters into the weights
            final.language_model = final.language_model.merge_and_unload()
            state = None
        final.save_pretrained(output_dir, state_dict=state)
        processor.save_pretrained(output_dir)
    accelerator.wait_for_everyone()


def _last_logged_loss(metrics_path: Path) -> float | None:
    lines = metrics_path.read_text().splitlines() if metrics_path.is_file() else []
    return json.loads(lines[-1])["loss"] if lines else None


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, name + "."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat
