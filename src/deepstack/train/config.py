"""The training run's YAML file, as dataclasses. Unknown keys and bad values are errors that name the key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"


@dataclass
class ModelSection:
    vision: str = "tiny-clip"  # local dir or short name (see deepstack.model.builder)
    llm: str = "tiny-llama"
    init_from: str | None = None  # a saved DeepStack model, e.g. the pretrain run's output
    settings: dict[str, Any] = field(default_factory=dict)  # DeepStackConfig fields
    vision_size: dict[str, Any] = field(default_factory=dict)  # sizes of a tiny-* vision encoder
    llm_size: dict[str, Any] = field(default_factory=dict)  # sizes of a tiny-* LLM
    train_vision: bool = False  # also train the vision encoder (DeepStack-V needs it)
    lora: LoraSettings | None = None  # LoRA on the LLM instead of full fine-tuning


@dataclass
class DataSource:
    path: str
    image_folder: str = "."
    weight: float = 1.0  # 2.0 takes every record twice, 0.5 a seeded half


@dataclass
class DataSection:
    sources: list[DataSource] = field(default_factory=list)
    max_length: int = 2048
    num_workers: int = 2
    skip_invalid: bool = False


@dataclass
class OptimSection:
    global_batch_size: int = 128
    micro_batch_size: int = 16
    lr: float = 2e-5
    vision_lr: float = 2e-6
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    epochs: float = 1.0
    max_steps: int | None = None
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto (bf16 where the GPU has it) | fp32 | bf16 | fp16
    gradient_checkpointing: bool = False
    seed: int = 42


@dataclass
class OutputSection:
    dir: str = "runs/train"
    save_every: int = 500
    keep_last: int = 2
    log_every: int = 1
    report_to: list[str] = field(default_factory=list)  # tensorboard, wandb


@dataclass
class TrainConfig:
    stage: str = "finetune"  # pretrain: projector only; finetune: projector + LLM
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    output: OutputSection = field(default_factory=OutputSection)

    def validate(self) -> None:
        if self.stage not in ("pretrain", "finetune"):
            raise ValueError(f"stage={self.stage!r}: choose pretrain (projector only) or finetune (projector + LLM)")
        if not self.data.sources:
            raise ValueError("data.sources is empty: list at least one {path, image_folder} of LLaVA JSON/JSONL")
        optim = self.optim
        if optim.global_batch_size % optim.micro_batch_size:
            raise ValueError(
                f"optim.global_batch_size={optim.global_batch_size} is not a multiple of "
                f"optim.micro_batch_size={optim.micro_batch_size}"
            )
        if optim.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"optim.precision={optim.precision!r}: choose auto, fp32, bf16 or fp16")
        if self.model.lora is not None and self.stage == "pretrain":
            raise ValueError("model.lora is set but stage=pretrain trains the projector only; drop one of them")
        for name in self.output.report_to:
            if name not in ("tensorboard", "wandb"):
                raise ValueError(f"output.report_to: unknown tracker {name!r}; choose tensorboard or wandb")


def _build(cls, data: Any, where: str):
    """Dataclass ``cls`` from a mapping, recursively; unknown keys fail with their dotted path."""
    if not dataclasses.is_dataclass(cls):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where or 'config'}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    values = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        kind = {"model": ModelSection, "data": DataSection, "optim": OptimSection, "output": OutputSection,
                "lora": LoraSettings}.get(name)
        if name == "sources":
            if not isinstance(value, list):
                raise ValueError(f"{path}: expected a list of {{path, image_folder, weight}}")
            value = [_build(DataSource, item, f"{path}[{i}]") for i, item in enumerate(value)]
        elif kind is not None and value is not None:
            value = _build(kind, value, path)
        elif "float" in str(fields[name].type) and isinstance(value, str):
            try:  # YAML reads 2e-5 (no dot) as a string
                value = float(value)
            except ValueError:
                raise ValueError(f"{path}={value!r}: expected a number") from None
        values[name] = value
    try:
        return cls(**values)
    except TypeError as error:
        raise ValueError(f"{where or 'config'}: {error}") from None


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = tree.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"override --{dotted}: {key} is not a section")
        tree = node
    tree[keys[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML file and apply ``key.sub=value`` overrides (values parsed as YAML: 1e-4, true, [a, b])."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such config file")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: invalid YAML: {error}") from None
        if not isinstance(tree, dict):
            raise ValueError(f"{path}: the top level must be a mapping")
    for override in overrides:
        key, sep, raw = override.removeprefix("--").partition("=")
        if not sep:
            raise ValueError(f"override {override!r}: write it as --section.key=value")
        _set_dotted(tree, key, yaml.safe_load(raw))
    config = _build(TrainConfig, tree, "")
    config.validate()
    return config


def config_to_dict(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)
