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
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ..model.builder import build_model, load_pretrained
from .config import ModelSection, TrainConfig, config_to_dict
from .data import Collator, LlavaDataset, Problem, mix, validate
from .report import plot_loss

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"


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
    skipped_records: int


def _precision(name: str) -> str:
    if name == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
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


def _make_model(config: TrainConfig):
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
    return model, processor


def _optimizer(model, optim):
    groups: dict[tuple[float, float], list] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        lr = optim.vision_lr if name.startswith("vision_tower.") else optim.lr
        decay = optim.weight_decay if parameter.dim() >= 2 else 0.0  # no decay on biases and norms
        groups.setdefault((lr, decay), []).append(parameter)
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen")
    return torch.optim.AdamW([{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()])


def _checkpoints(output_dir: Path) -> list[Path]:
    folder = output_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    done = [p for p in folder.iterdir() if p.name.startswith("step-") and (p / "trainer_state.json").is_file()]
    return sorted(done, key=lambda p: int(p.name.removeprefix("step-")))


def _save_checkpoint(accelerator, processor, output_dir: Path, step: int, keep_last: int) -> None:
    """Written to a temporary folder and renamed into place: a kill at any moment leaves either the old
    set of checkpoints or the new one, never a half-written checkpoint that looks complete."""
    folder = output_dir / CHECKPOINTS
    final, temporary = folder / f"step-{step:08d}", folder / f".step-{step:08d}.tmp"
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    if accelerator.is_main_process:
        processor.save_pretrained(temporary / "processor")
        (temporary / "trainer_state.json").write_text(json.dumps({"step": step}))
        os.replace(temporary, final)
        for old in _checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the log lines of steps after ``step``: the resumed run writes them again."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))


def train(config: TrainConfig, resume: bool = False) -> TrainResult:
    started = time.time()
    optim, output_dir = config.optim, Path(config.output.dir)
    for tracker in config.output.report_to:
        if importlib.util.find_spec(tracker) is None:
            raise ValueError(f"output.report_to lists {tracker}, which is not installed: pip install {tracker}")
    accelerator = Accelerator(
        cpu=torch.accelerator.current_accelerator() is None,  # lets torchrun's processes use gloo on a CPU machine
        mixed_precision=_precision(optim.precision),
        log_with=config.output.report_to or None,
        project_dir=str(output_dir),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],  # text-only batches
    )
    world, rank = accelerator.num_processes, accelerator.process_index
    per_step = optim.micro_batch_size * world
    if optim.global_batch_size % per_step:
        raise ValueError(
            f"optim.global_batch_size={optim.global_batch_size} is not a multiple of micro_batch_size "
            f"{optim.micro_batch_size} x {world} process(es)"
        )
    accumulation = optim.global_batch_size // per_step
    set_seed(optim.seed)

    model, processor = _make_model(config)
    items, problems = validate(config.data.sources, processor, config.stage, config.data.max_length)
    if problems and not config.data.skip_invalid:
        raise DataError(problems)
    output_dir.mkdir(parents=True, exist_ok=True)
    if problems and accelerator.is_main_process:
        with open(output_dir / "invalid_records.jsonl", "w") as log:
            for problem in problems:
                log.write(json.dumps(problem.__dict__) + "\n")
        print(f"skipped {len(problems)} invalid record(s); the list is in {output_dir / 'invalid_records.jsonl'}")
    dataset = LlavaDataset(mix(items, config.data.sources, optim.seed), processor)
    steps_per_epoch = len(dataset) // optim.global_batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(dataset)} valid record(s), fewer than one global batch (optim.global_batch_size="
            f"{optim.global_batch_size})"
        )
    total_steps = optim.max_steps or math.ceil(optim.epochs * steps_per_epoch)

    optimizer = _optimizer(model, optim)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(optim.warmup_ratio * total_steps), total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    start_step = 0
    if resume and (checkpoints := _checkpoints(output_dir)):
        accelerator.load_state(str(checkpoints[-1]))
        start_step = json.loads((checkpoints[-1] / "trainer_state.json").read_text())["step"]
    metrics_path = output_dir / METRICS
    if accelerator.is_main_process:
        if start_step:
            _truncate_metrics(metrics_path, start_step)
        else:
            metrics_path.unlink(missing_ok=True)
        (output_dir / "train_config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
        for stale in (output_dir / CHECKPOINTS).glob(".step-*.tmp"):
            shutil.rmtree(stale)
    if config.output.report_to:
        accelerator.init_trackers("deepstack", config=_flat(config_to_dict(config)))

    sampler = GlobalBatchSampler(
        len(dataset), optim.global_batch_size, optim.micro_batch_size, world, rank, optim.seed, start_step, total_steps
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=Collator(processor.tokenizer.pad_token_id or 0),
        num_workers=config.data.num_workers,
        persistent_workers=False,
    )
    batches = iter(loader)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    progress = tqdm(
        total=total_steps, initial=start_step, disable=not accelerator.is_main_process, desc=config.stage, unit="step"
    )
    loss_value, window_start = None, time.time()
    for step in range(start_step, total_steps):
        micro_batches = [next(batches) for _ in range(accumulation)]
        answer_tokens = sum((batch["labels"][:, 1:] != -100).sum() for batch in micro_batches)
        answer_tokens = accelerator.reduce(answer_tokens.to(accelerator.device), "sum").clamp(min=1)
        step_loss = torch.zeros((), device=accelerator.device)
        for index, batch in enumerate(micro_batches):
            batch = {key: value.to(accelerator.device) for key, value in batch.items()}
            sync = index == accumulation - 1
            with (nullcontext() if sync else accelerator.no_sync(model)), accelerator.autocast():
                loss = model(**batch, num_items_in_batch=answer_tokens).loss
            accelerator.backward(loss * world)  # DDP averages gradients over processes; we want their sum
            step_loss += loss.detach()
        grad_norm = accelerator.clip_grad_norm_(trainable, optim.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = accelerator.reduce(step_loss, "sum").item()

        done = step + 1
        if done % config.output.log_every == 0 or done == total_steps:
            elapsed = time.time() - window_start
            samples = config.output.log_every * optim.global_batch_size
            metrics = {
                "step": done,
                "epoch": round(done / steps_per_epoch, 4),
                "loss": loss_value,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm),
                "samples_per_s": round(samples / max(elapsed, 1e-9), 2),
            }
            window_start = time.time()
            if accelerator.is_main_process:
                with open(metrics_path, "a") as log:
                    log.write(json.dumps(metrics) + "\n")
                progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{metrics['lr']:.2e}", sps=metrics["samples_per_s"])
            if config.output.report_to:
                accelerator.log(metrics, step=done)
        progress.update(1)
        if done % config.output.save_every == 0 and done != total_steps:
            _save_checkpoint(accelerator, processor, output_dir, done, config.output.keep_last)
    progress.close()

    _save_checkpoint(accelerator, processor, output_dir, total_steps, config.output.keep_last)
    _save_final(accelerator, model, processor, output_dir)
    accelerator.end_training()
    seconds = time.time() - started
    if accelerator.is_main_process:
        plot_loss(metrics_path, output_dir / "loss.png")
        summary = {"steps": total_steps, "seconds": round(seconds, 1), "final_loss": loss_value,
                   "model": str(output_dir), "skipped_records": len(problems)}
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return TrainResult(output_dir, total_steps, loss_value, seconds, len(problems))


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


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, name + "."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat
