"""The comparison modes of DEEPSTACK.md as strategies: one class per ``stack_mode``.

Each mode answers three questions: how many image tokens an image takes in the LLM's sequence, how wide the
projector's input is, and how the vision side turns the views of a batch of images into
``(sequence features, stacks)``. The model calls ``mode.features(...)`` and never branches on the mode name.

Shapes: ``I`` images, ``N = h*w`` global tokens, ``S = s*s`` stacks, ``C`` vision width, ``D`` LLM width.
``sequence``: ``(I, tokens_per_image, D)``; ``stacks``: ``(S, I, N, D)`` or ``None``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:  # the model passes itself in; no runtime import to keep the dependency one-way
    from .modeling import DeepStackForConditionalGeneration


class StackMode:
    name: ClassVar[str]
    needs_hires: ClassVar[bool] = True
    injects_into_llm: ClassVar[bool] = False

    def tokens_per_image(self, num_global_tokens: int, num_stacks: int) -> int:
        return num_global_tokens

    def projector_input_size(self, vision_width: int, num_stacks: int) -> int:
        return vision_width

    def visual_tokens_seen(self, num_global_tokens: int, num_stacks: int, injected_stacks: int) -> int:
        """How many distinct visual tokens reach the LLM in any way (sequence, stacks or channels)."""
        return self.tokens_per_image(num_global_tokens, num_stacks)

    def features(
        self, model: DeepStackForConditionalGeneration, global_view: torch.Tensor, crops: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError


class NoStacks(StackMode):
    """LLaVA-1.5: the global view's N tokens only."""

    name, needs_hires = "none", False

    def features(self, model, global_view, crops):
        return model.projector(model.vision_features(global_view)), None


class LLMStacks(StackMode):
    """DeepStack-L: global tokens in the sequence, S hi-res stacks added before decoder layers (Alg. 1)."""

    name, injects_into_llm = "llm", True

    def visual_tokens_seen(self, num_global_tokens, num_stacks, injected_stacks):
        return (1 + injected_stacks) * num_global_tokens

    def features(self, model, global_view, crops):
        sequence = model.projector(model.vision_features(global_view))
        # the MLP is per token; projecting in (S, I, N, D) order makes each stack one contiguous block, so the
        # forward can hand the rows of a whole batch to the injection without copying them
        stacks = model.projector(model.hires_stacks(crops)[:, : model.config.num_injected_stacks].transpose(0, 1))
        return sequence, stacks


class ViTStacks(StackMode):
    """DeepStack-V: stacks added inside the vision encoder; the LLM sees N tokens (Sec. 3.3)."""

    name = "vit"
    visual_tokens_seen = LLMStacks.visual_tokens_seen  # the global tokens and the injected stacks, as in llm

    def features(self, model, global_view, crops):
        return model.projector(model.vision_features_with_stacks(global_view, crops)), None


class HiresString(StackMode):
    """The S*N hi-res tokens as a sequence (row-major over the mosaicked grid), no global view."""

    name = "hires_string"

    def tokens_per_image(self, num_global_tokens, num_stacks):
        return num_stacks * num_global_tokens

    def features(self, model, global_view, crops):
        return model.projector(model.hires_grid(crops).flatten(1, 2)), None


class GlobalHiresString(StackMode):
    """LLaVA-NeXT style: global tokens then hi-res tokens, (1+S)*N in the sequence."""

    name = "global_hires_string"

    def tokens_per_image(self, num_global_tokens, num_stacks):
        return (1 + num_stacks) * num_global_tokens

    def features(self, model, global_view, crops):
        tokens = torch.cat([model.vision_features(global_view), model.hires_grid(crops).flatten(1, 2)], dim=1)
        return model.projector(tokens), None


class DimConcat(StackMode):
    """Global and stack features concatenated on channels before the projector; N tokens."""

    name = "dim_concat"

    def projector_input_size(self, vision_width, num_stacks):
        return (1 + num_stacks) * vision_width

    def visual_tokens_seen(self, num_global_tokens, num_stacks, injected_stacks):
        return (1 + num_stacks) * num_global_tokens

    def features(self, model, global_view, crops):
        stacks = model.hires_stacks(crops)  # (I, S, N, C)
        channels = torch.cat([model.vision_features(global_view).unsqueeze(1), stacks], dim=1)
        return model.projector(channels.permute(0, 2, 1, 3).flatten(2)), None


class DummyStacks(StackMode):
    """Table 6's control: the global tokens themselves stacked S times, no hi-res detail."""

    name, needs_hires, injects_into_llm = "dummy", False, True

    def features(self, model, global_view, crops):
        sequence = model.projector(model.vision_features(global_view))
        stacks = sequence.unsqueeze(0).expand(model.config.num_injected_stacks, *sequence.shape)
        return sequence, stacks


STACK_MODES: dict[str, StackMode] = {
    mode.name: mode() for mode in (NoStacks, LLMStacks, ViTStacks, HiresString, GlobalHiresString, DimConcat, DummyStacks)
}
