"""What a converted checkpoint must hold, and how source tensors are matched to it: the tensor names and shapes
of a ``DeepStackForConditionalGeneration`` for a given config, read from a skeleton made on the meta device
(no memory, no initialisation)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..model.configuration import DeepStackConfig
from ..model.modeling import DeepStackForConditionalGeneration
from .checkpoint import CheckpointReader, ConversionError, Entry, refuse_missing, refuse_unmapped

UNUSED = ""  # what a rename gives for a tensor that deliberately has no place in the target

# the wrapper some vision models put around their weights (CLIP and SigLIP checkpoints of older transformers
# name them ``vision_model.embeddings...``, newer ones ``embeddings...``)
VISION_WRAPPER = "vision_model."


@dataclass
class TargetLayout:
    """shapes: every tensor the saved model holds (one name per tied group); tied: names that share a tensor
    with a name in ``shapes`` (the model re-ties them on load); recomputed: buffers the model computes itself
    (``position_ids``, rotary ``inv_freq``), never read from a checkpoint; language_base / output_head: where
    the LLM's base model and its output projection sit; input_embedding: the name of the token-embedding
    matrix; has_cls: whether the vision tower puts a CLS token
    in front of the patch tokens."""

    shapes: dict[str, tuple[int, ...]]
    tied: dict[str, str]
    recomputed: set[str]
    language_base: str
    output_head: str
    input_embedding: str
    has_cls: bool

    def knows(self, name: str) -> bool:
        return name in self.shapes or name in self.tied or name in self.recomputed

    def vision_name(self, rest: str) -> str:
        """Our name for a vision-tower tensor named ``rest`` inside its tower, with or without the wrapper."""
        candidates = [rest, rest.removeprefix(VISION_WRAPPER), VISION_WRAPPER + rest]
        for candidate in candidates:
            if self.knows("vision_tower." + candidate):
                return "vision_tower." + candidate
        return "vision_tower." + rest


def target_layout(config: DeepStackConfig) -> TargetLayout:
    with torch.device("meta"):
        model = DeepStackForConditionalGeneration(config)
    language = model.language_model
    modules = {id(module): name for name, module in language.named_modules()}
    output_head = f"language_model.{modules[id(language.get_output_embeddings())]}."
    input_embedding = f"language_model.{modules[id(language.get_input_embeddings())]}.weight"
    first_name: dict[int, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    tied: dict[str, str] = {}
    # the output projection is the one dropped from a tied pair, as transformers' save_pretrained does
    entries = sorted(model.state_dict(keep_vars=True).items(), key=lambda item: item[0].startswith(output_head))
    for name, tensor in entries:
        if id(tensor) in first_name:
            tied[name] = first_name[id(tensor)]
        else:
            first_name[id(tensor)] = name
            shapes[name] = tuple(tensor.shape)
    persistent = set(model.state_dict())
    recomputed = {name for name, _ in model.named_buffers() if name not in persistent}
    tower = getattr(model.vision_tower, "vision_model", model.vision_tower)
    has_cls = hasattr(getattr(tower, "embeddings", None), "class_embedding")
    return TargetLayout(
        shapes=shapes,
        tied=tied,
        recomputed=recomputed,
        language_base=f"language_model.{language.base_model_prefix}.",
        output_head=output_head,
        input_embedding=input_embedding,
        has_cls=has_cls,
    )


def map_entries(src: Path, reader: CheckpointReader, layout: TargetLayout, rename, what: str, also=()) -> list[Entry]:
    """One ``Entry`` per tensor the target holds, from ``rename(source name)``: a target name, ``UNUSED`` for a
    tensor known to have no use (e.g. CLIP's text half), or ``None`` for one not understood. ``also`` holds more
    ``(folder, reader, rename)`` sources, read after the first. Refuses unknown source tensors, two sources for
    one target, wrong shapes and missing tensors."""
    entries: dict[str, Entry] = {}
    unknown, clashes, wrong = [], [], []
    for folder, source, renamer in [(src, reader, rename), *also]:
        for name, info in source.tensors.items():
            target = renamer(name)
            if target == UNUSED:
                continue
            if target is None or not layout.knows(target):
                unknown.append(name if folder == src else f"{folder}:{name}")
                continue
            if target in layout.recomputed or target in layout.tied:
                continue  # the model computes or re-ties these itself
            if target in entries:
                clashes.append(f"{name} -> {target}")
                continue
            if info.shape != layout.shapes[target]:
                wrong.append(f"{name} {list(info.shape)} (expected {list(layout.shapes[target])})")
                continue
            entries[target] = Entry(target, lambda source=source, name=name: source.get(name), info.shape, info.dtype)
    refuse_unmapped(src, unknown, what)
    if clashes:
        raise ConversionError(f"{src}: several tensors give the same weight: {', '.join(clashes)}")
    if wrong:
        raise ConversionError(f"{src}: tensor shapes do not match config.json: {', '.join(wrong)}")
    refuse_missing(src, set(layout.shapes) - set(entries), what)
    return list(entries.values())
