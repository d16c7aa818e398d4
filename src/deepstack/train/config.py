"""The training run's YAML file, as pydantic models: one section per builder (model, data, optim, output).

A setting that cannot work fails when the config is read, and the error names the dotted key, the value and
the reason, e.g. ``optim.warmup_ratio=2: input should be less than or equal to 1``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Section(BaseModel):
    """A config section. Unknown keys are errors; YAML's ``2e-5`` (read as a string, no dot) becomes the float
    the field asks for. Built by keyword, a bad value raises pydantic's ``ValidationError``, a ``ValueError``."""

    model_config = ConfigDict(extra="forbid")


class LoraSettings(Section):
    r: int = Field(16, ge=1)
    alpha: int = 32
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"


class ModelSection(Section):
    vision: str = "tiny-clip"  # local dir or short name (see deepstack.model.builder)
    llm: str = "tiny-llama"
    init_from: str | None = None  # a saved DeepStack model, e.g. the pretrain run's output
    settings: dict[str, Any] = Field(default_factory=dict)  # DeepStackConfig fields
    vision_size: dict[str, Any] = Field(default_factory=dict)  # sizes of a tiny-* vision encoder
    llm_size: dict[str, Any] = Field(default_factory=dict)  # sizes of a tiny-* LLM
    train_vision: bool = False  # also train the vision encoder (DeepStack-V needs it)
    lora: LoraSettings | None = None  # LoRA on the LLM instead of full fine-tuning


class DataSource(Section):
    path: str
    image_folder: str = "."
    weight: float = Field(1.0, gt=0)  # 2.0 takes every record twice, 0.5 a seeded half
    allow_outside: bool = False  # read images outside image_folder too (absolute paths, "..", links out of it)


class DataSection(Section):
    sources: list[DataSource] = Field(default_factory=list)
    max_length: int = Field(2048, ge=1)
    num_workers: int = Field(2, ge=0)
    skip_invalid: bool = False


class OptimSection(Section):
    global_batch_size: int = Field(128, ge=1)
    micro_batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-5, ge=0)
    vision_lr: float = Field(2e-6, ge=0)
    projector_lr: float | None = Field(None, ge=0)  # projector(s) and stack weights; None: lr
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, le=1)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)  # overrides epochs
    max_grad_norm: float = Field(1.0, gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 where the GPU has it, else fp32
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile each encoder/LLM layer (model.compile_layers): faster steps, same model
    seed: int = 42


class OutputSection(Section):
    dir: str = "runs/train"
    save_every: int = Field(500, ge=1)
    keep_last: int = Field(2, ge=1)
    log_every: int = Field(1, ge=1)
    report_to: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list)


class TrainConfig(Section):
    stage: Literal["pretrain", "finetune"] = "finetune"  # pretrain: projector only; finetune: projector + LLM
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    output: OutputSection = Field(default_factory=OutputSection)

    @model_validator(mode="after")
    def check_combinations(self) -> TrainConfig:
        """Settings that are fine alone but cannot work together."""
        if not self.data.sources:
            raise ValueError("data.sources is empty: list at least one {path, image_folder} of LLaVA JSON/JSONL")
        optim = self.optim
        if optim.global_batch_size % optim.micro_batch_size:
            raise ValueError(
                f"optim.global_batch_size={optim.global_batch_size} is not a multiple of "
                f"optim.micro_batch_size={optim.micro_batch_size}"
            )
        if self.model.lora is not None and self.stage == "pretrain":
            raise ValueError("model.lora is set but stage=pretrain trains the projector only; drop one of them")
        return self


def describe(error: ValidationError, data: dict) -> str:
    """pydantic's errors about the config tree ``data`` as lines of ``key.path=value: reason``."""
    lines, reasons, unknown = [], {}, {}
    for problem in error.errors():
        path = _key_path(problem["loc"], data)
        if problem["type"] == "extra_forbidden":
            section, _, key = path.rpartition(".")
            unknown.setdefault(section, []).append((key, f"{path}={_short(problem['input'])}"))
        elif problem["type"] == "value_error" and not problem["loc"]:
            lines.append(str(problem["ctx"]["error"]))  # a check of several keys: its message names them
        elif problem["type"] == "missing":
            lines.append(f"{path}: missing; add it")
        else:  # a value that fails each member of a union gives one error per member: one line for them all
            msg = problem["msg"]
            reasons.setdefault(f"{path}={_short(problem['input'])}", []).append(msg[:1].lower() + msg[1:])
    lines += [f"{key}: {' or '.join(why)}" for key, why in reasons.items()]
    for section, given in unknown.items():  # grouped, so that the known keys are listed once
        names, values = ", ".join(key for key, _ in given), ", ".join(value for _, value in given)
        known = ", ".join(_section_at(section).model_fields)
        lines.append(f"{section or 'config'}: unknown key(s) {names} ({values}); check the spelling; "
                     f"the known keys are {known}")
    if len(lines) == 1:
        return lines[0]
    return f"{len(lines)} problems in the config:\n" + "\n".join(f"  {line}" for line in lines)


def _key_path(location: tuple, data: dict) -> str:
    """``data.sources[0].path`` from pydantic's location of an error. The location also holds the names of
    union members tried (``str``, ``list[str]``); following only keys that exist in ``data`` leaves them out."""
    path, node = "", data
    for index, part in enumerate(location):
        if isinstance(node, dict) and part in node:
            path, node = f"{path}.{part}" if path else str(part), node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            path, node = f"{path}[{part}]", node[part]
        elif index == len(location) - 1 and isinstance(node, dict):
            path = f"{path}.{part}" if path else str(part)  # a required key that is not there
    return path


def _section_at(path: str) -> type[Section]:
    """The section that a dotted path such as ``model.lora`` or ``data.sources[0]`` names."""
    section: type[Section] = TrainConfig
    for name in filter(None, re.sub(r"\[\d+\]", "", path).split(".")):
        annotation = section.model_fields[name].annotation  # ModelSection, LoraSettings | None, list[DataSource]
        section = next(kind for kind in (*get_args(annotation), annotation) if _is_section(kind))
    return section


def _is_section(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, Section)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as error:
        raise ValueError(describe(error, tree)) from None


def config_to_dict(config: TrainConfig) -> dict:
    return config.model_dump()
