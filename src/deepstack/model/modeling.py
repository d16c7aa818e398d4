"""``DeepStackForConditionalGeneration``: vision tower + projector + any Hugging Face causal LM.

The vision side (``get_image_features``) turns the views of each image into the tokens the LLM's sequence
holds and, in DeepStack-L, the S stacks; the forward writes the sequence tokens into the image-token
positions of the embeddings and adds the stacks with ``method.injection.inject_stacks``. Each comparison
mode's facts (token counts, widths) are in ``modes.py`` and its vision code is one entry of ``VISION_SIDE``
here; nothing else looks at the mode's name.

Pre-encoded images follow transformers' ``mm_encoder_outputs={"image": ...}`` convention: row ``i`` of
``pooler_output`` (and of each entry of ``deepstack_features``) belongs to the ``i``-th image token of the
batch in (row, position) order. That is what lets ``generate(prefill_chunk_size=...)`` give each prefill
chunk exactly the stack rows of the image positions it holds.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPooling, CausalLMOutputWithPast

from ..method.injection import find_layers, inject_stacks, run_until_layer
from ..method.sampling import mosaic_crops, sample_stacks
from .configuration import DeepStackConfig
from .modes import STACK_MODES
from .stacks import StackTransform, embedding_scale


@dataclass
class DeepStackImageOutput(BaseModelOutputWithPooling):
    r"""pooler_output: per image, the ``(tokens_per_image, D)`` features that fill its image tokens.
    deepstack_features: ``None``, or S entries (stack k), each ``(I, N, D)`` (or a list of per-image ``(N, D)``;
    under DeepStack-HD per-image ``(tokens, D)`` with zero rows at the newlines):
    added before decoder layer ``stack_start_layer + k*stack_interval`` at each image's token positions."""

    deepstack_features: list | None = None


class DeepStackProjector(nn.Module):
    """LLaVA-1.5's 2-layer MLP, shared by the global view and the stacks."""

    def __init__(self, in_features: int, hidden_size: int, act: str):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, hidden_size)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = features.to(self.linear_1.weight.dtype)  # an fp32 tower may feed a bf16 projector
        return self.linear_2(self.act(self.linear_1(features)))


class DeepStackPreTrainedModel(PreTrainedModel):
    config: DeepStackConfig
    config_class = DeepStackConfig
    base_model_prefix = ""
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True


class DeepStackForConditionalGeneration(DeepStackPreTrainedModel, GenerationMixin):
    def __init__(self, config: DeepStackConfig):
        super().__init__(config)
        mode = STACK_MODES[config.stack_mode]
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.projector = DeepStackProjector(
            mode.projector_input_size(config.vision_config.hidden_size, config.num_stacks),
            config.text_config.hidden_size,
            config.projector_hidden_act,
        )
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self._add_stack_parts()
        self.register_parameter("image_newline", _new_image_newline(config))  # DeepStack-HD only, else None
        self._no_split_modules = sorted(
            {*(getattr(self.vision_tower, "_no_split_modules", None) or ())}
            | {*(getattr(self.language_model, "_no_split_modules", None) or ())}
        )
        self.post_init()

    @classmethod
    def from_modules(
        cls, config: DeepStackConfig, vision_tower: nn.Module, language_model: nn.Module
    ) -> DeepStackForConditionalGeneration:
        """A model around existing (e.g. pretrained) towers, without allocating and initialising a second
        copy of them: the skeleton is made on the meta device, then the towers and a fresh projector go in."""
        with torch.device("meta"):
            model = cls(config)
        model.vision_tower, model.language_model = vision_tower, language_model
        device = next(language_model.parameters()).device
        model.projector = DeepStackProjector(
            model.projector.linear_1.in_features, config.text_config.hidden_size, config.projector_hidden_act
        ).to(device)
        for layer in (model.projector.linear_1, model.projector.linear_2):
            model._init_weights(layer)
        model._add_stack_parts()  # off the meta device, started from the fresh projector and the LLM
        for part in (model.stack_projectors, model.level_projectors, model.stack_transform):
            part.to(device).apply(model._init_weights)
        model.register_parameter("image_newline", _new_image_newline(config, language_model))
        return model

    def _add_stack_parts(self) -> None:
        """The weights of the stack settings (docs/settings.md, "Stack settings"); with the defaults there are
        none, so checkpoints saved without them load unchanged. One projector per injected hi-res stack
        (``stack_projectors="per_stack"``), one per encoder level (``stack_source``), and the norm, scale,
        position embedding and gate of ``model/stacks.py``."""
        config = self.config
        width, act = self.projector.linear_1.in_features, config.projector_hidden_act
        hidden = config.text_config.hidden_size
        per_stack = config.stack_projectors == "per_stack" and config.stack_source != "vit_levels"
        levels = config.stack_vit_levels if config.stack_source != "hires" else []
        self.stack_projectors = nn.ModuleList(
            DeepStackProjector(width, hidden, act) for _ in range(config.num_injected_stacks if per_stack else 0)
        )
        self.level_projectors = nn.ModuleList(DeepStackProjector(width, hidden, act) for _ in levels)
        self.stack_transform = StackTransform.for_config(config)

    # ---- plumbing that makes us look like any transformers causal LM --------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def _init_weights(self, module: nn.Module) -> None:
        if module is self.projector.linear_1 or module is self.projector.linear_2:
            std = getattr(self.config.text_config, "initializer_range", 0.02)
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
        for projector in (*self.stack_projectors, *self.level_projectors):
            # per-stack and per-level projectors start as copies of the shared one (docs/settings.md); layer by
            # layer, since transformers initialises the modules that hold the missing weights themselves
            pairs = ((projector.linear_1, self.projector.linear_1), (projector.linear_2, self.projector.linear_2))
            for own, shared in pairs:
                if module is own:
                    init.copy_(own.weight, shared.weight)
                    init.copy_(own.bias, shared.bias)
        if isinstance(module, StackTransform):
            module.reset_parameters(embedding_scale(self.get_input_embeddings()))
        if module is self and self.image_newline is not None:  # DeepStack-HD; skips a loaded one
            init.normal_(self.image_newline, std=self.config.text_config.hidden_size**-0.5)

    def set_trainable(self, *, vision: bool, projector: bool, language: bool) -> None:
        """Freeze or unfreeze the three parts (pretrain: projector only; finetune: projector + LLM)."""
        for part, flag in ((self.vision_tower, vision), (self.projector, projector), (self.language_model, language)):
            part.requires_grad_(flag)
        for part in (self.stack_projectors, self.level_projectors, self.stack_transform):
            part.requires_grad_(projector)  # the stack settings' weights train with the projector
        if self.image_newline is not None:  # DeepStack-HD's row-end token is part of the connector
            self.image_newline.requires_grad_(projector)

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return find_layers(self.language_model, self.config.text_config.num_hidden_layers)

    @property
    def vision_layers(self) -> nn.ModuleList:
        return find_layers(self.vision_tower, self.config.vision_config.num_hidden_layers)

    def compile_layers(self) -> None:
        """``torch.compile`` each transformer layer of the encoder and the LLM in place (regional compilation):
        identical layers share one compiled graph, so compiling takes seconds to a minute rather than the whole
        model's minutes, and the stacks' injection hooks stay outside the graphs. Same model and weights, fused
        element-wise kernels; for training (``optim.compile``): evaluation under
        ``torch.compiler.set_stance("force_eager")`` runs the layers as written."""
        for layer in (*self.vision_layers, *self.decoder_layers):
            layer.forward = torch.compile(layer.forward)

    # ---- the vision side ---------------------------------------------------------------------------
    def _vision_states(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every hidden state of the encoder for ``pixels`` ``(n, 3, H, W)``, each ``(n, L, C)``; 0: embeddings."""
        out = self.vision_tower(pixel_values=pixels.to(self.vision_tower.dtype), output_hidden_states=True)
        return out.hidden_states

    def _vision_hidden(self, pixels: torch.Tensor) -> torch.Tensor:
        """Hidden states of ``vision_feature_layer`` for ``pixels`` ``(n, 3, H, W)``: ``(n, L, C)``."""
        return self._vision_states(pixels)[self.config.vision_feature_layer]

    def _patch_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """The N grid tokens of ``(n, L, C)`` encoder states (CLS dropped under the 'default' strategy)."""
        if self.config.vision_feature_select_strategy == "default":
            hidden = hidden[:, 1:]
        if hidden.shape[1] != self.config.num_global_tokens:
            h, w = self.config.image_grid
            raise ValueError(
                f"the vision encoder gives {hidden.shape[1]} tokens per crop after vision_feature_select_strategy="
                f"'{self.config.vision_feature_select_strategy}', but DeepStack needs the {h}x{w} patch grid "
                f"({h * w} tokens): use 'default' for encoders with a CLS token (CLIP) and 'full' for encoders "
                "without one (SigLIP)"
            )
        return hidden

    def vision_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Encoder features of crops ``(n, 3, H, W)``: ``(n, N, C)``, tokens row-major."""
        return self._patch_tokens(self._vision_hidden(pixels))

    def hires_grid(self, crops: torch.Tensor) -> torch.Tensor:
        """The hi-res feature map F ``(I, s*h, s*w, C)`` from each image's ``s*s`` crops ``(I, S, 3, H, W)``."""
        num_images, num_crops = crops.shape[:2]
        h, w = self.config.image_grid
        features = self.vision_features(crops.flatten(0, 1))
        return mosaic_crops(features.unflatten(0, (num_images, num_crops)), self.config.hires_scale, h, w)

    def hires_stacks(self, crops: torch.Tensor) -> torch.Tensor:
        """Sampling2D of the hi-res map into ``(I, S, N, C)`` stacks (docs/method.md, "Sampling2D")."""
        return sample_stacks(self.hires_grid(crops), self.config.hires_scale, self.config.stack_sampling)

    def vision_features_with_stacks(self, global_view: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
        """DeepStack-V: crops run through the first m encoder layers, are mosaicked and sampled, and stack k
        is added to the global view's patch tokens before encoder layer m + k. Returns ``(I, N, C)``."""
        config, layers = self.config, self.vision_layers
        start, scale = config.vit_stack_start_layer, config.hires_scale
        h, w = config.image_grid
        num_images, num_crops = crops.shape[:2]
        crop_states = run_until_layer(
            self.vision_tower, layers, start, pixel_values=crops.flatten(0, 1).to(self.vision_tower.dtype)
        )
        length = crop_states.shape[1]
        prefix = length - config.num_global_tokens  # CLS and other non-grid tokens come first
        crop_tokens = crop_states[:, prefix:].unflatten(0, (num_images, num_crops))
        stacks = sample_stacks(mosaic_crops(crop_tokens, scale, h, w), scale, config.stack_sampling)
        stacks = stacks[:, : config.num_injected_stacks]
        positions = (
            torch.arange(num_images, device=crops.device)[:, None] * length
            + prefix
            + torch.arange(config.num_global_tokens, device=crops.device)
        ).flatten()
        with inject_stacks(layers, positions, stacks.transpose(0, 1).flatten(1, 2), start, 1):
            return self.vision_features(global_view)

    # ---- each stack_mode's vision side: (global view (I, 3, H, W), crops (I, S, 3, H, W) or None) ->
    # ---- (sequence features (I, tokens_per_image, D), stacks (S, I, N, D) or None)
    def _global_only(self, global_view, crops):
        """none: the global view's N tokens (LLaVA-1.5)."""
        return self.projector(self.vision_features(global_view)), None

    def _llm_stacks(self, global_view, crops):
        """llm: global tokens in the sequence and stacks for the decoder layers (Algorithm 1): the S hi-res
        stacks and/or the encoder-level stacks (``stack_source``), through ``stack_transform``."""
        config = self.config
        states = self._vision_states(global_view)
        sequence = self.projector(self._patch_tokens(states[config.vision_feature_layer]))
        blocks = []  # (k, I, N, D) blocks of stacks, in injection order
        if config.stack_source != "vit_levels":
            # the MLP is per token; projecting in (S, I, N, D) order makes each stack one contiguous block, so the
            # forward can hand the rows of a whole batch to the injection without copying them
            hires = self.hires_stacks(crops)[:, : config.num_injected_stacks].transpose(0, 1)
            if len(self.stack_projectors):
                blocks.append(torch.stack([project(stack) for project, stack in zip(self.stack_projectors, hires)]))
            else:
                blocks.append(self.projector(hires))
        if config.stack_source != "hires":  # the global view's intermediate encoder layers, as in Qwen3-VL
            levels = zip(self.level_projectors, config.stack_vit_levels)
            blocks.append(torch.stack([project(self._patch_tokens(states[level])) for project, level in levels]))
        return sequence, self.stack_transform(blocks[0] if len(blocks) == 1 else torch.cat(blocks))

    def _vit_stacks(self, global_view, crops):
        """vit: stacks added inside the encoder (Sec. 3.3); N tokens reach the LLM."""
        return self.projector(self.vision_features_with_stacks(global_view, crops)), None

    def _hires_string(self, global_view, crops):
        """hires_string: the S*N hi-res tokens, row-major over the mosaicked grid, no global view."""
        return self.projector(self.hires_grid(crops).flatten(1, 2)), None

    def _global_hires_string(self, global_view, crops):
        """global_hires_string: the global tokens, then the hi-res tokens ((1+S)*N)."""
        tokens = torch.cat([self.vision_features(global_view), self.hires_grid(crops).flatten(1, 2)], dim=1)
        return self.projector(tokens), None

    def _dim_concat(self, global_view, crops):
        """dim_concat: global and stack features concatenated on channels before the projector; N tokens."""
        stacks = self.hires_stacks(crops)  # (I, S, N, C)
        channels = torch.cat([self.vision_features(global_view).unsqueeze(1), stacks], dim=1)
        return self.projector(channels.permute(0, 2, 1, 3).flatten(2)), None

    def _dummy_stacks(self, global_view, crops):
        """dummy (Table 6): the global tokens themselves as the S stacks, no hi-res detail."""
        sequence = self.projector(self.vision_features(global_view))
        stacks = sequence.unsqueeze(0).expand(self.config.num_injected_stacks, *sequence.shape)
        return sequence, self.stack_transform(stacks)

    VISION_SIDE = {
        "none": _global_only, "llm": _llm_stacks, "vit": _vit_stacks, "hires_string": _hires_string,
        "global_hires_string": _global_hires_string, "dim_concat": _dim_concat, "dummy": _dummy_stacks,
    }

    def get_image_features(
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None = None, **kwargs
    ) -> DeepStackImageOutput:
        """Encode images. ``pixel_values``: ``(I, V, 3, H, W)`` with view 0 the global view and views 1..S the
        hi-res crops (row-major), as the processor makes them; ``(I, 3, H, W)`` for modes without hi-res.
        DeepStack-HD also needs ``image_sizes`` ``(I, 2)``, each image's (height, width) (see ``hd_image_features``)."""
        config, mode = self.config, STACK_MODES[self.config.stack_mode]
        if config.image_grid_pinpoints is not None:
            return self.hd_image_features(pixel_values, image_sizes)
        if pixel_values.dim() == 4:
            pixel_values = pixel_values.unsqueeze(1)
        if pixel_values.dim() != 5:
            raise ValueError(f"pixel_values must be (images, views, 3, H, W), got shape {tuple(pixel_values.shape)}")
        views = pixel_values.shape[1]
        if config.needs_hires_view and views != 1 + config.num_stacks:
            raise ValueError(
                f"stack_mode='{config.stack_mode}' needs the global view and {config.num_stacks} hi-res crops per "
                f"image (hires_scale={config.hires_scale}), so {1 + config.num_stacks} views, but pixel_values "
                f"holds {views}; make the inputs with a DeepStackProcessor built for this model"
            )
        crops = pixel_values[:, 1:] if config.needs_hires_view else None  # level stacks read the global view only
        sequence, stacks = self.VISION_SIDE[config.stack_mode](self, pixel_values[:, 0], crops)
        return DeepStackImageOutput(
            pooler_output=list(sequence),
            deepstack_features=None if stacks is None else list(stacks),  # S entries of (I, N, D)
        )

    # ---- DeepStack-HD: any-resolution global view (docs/method.md, "DeepStack-HD"; model/anyres.py) ----
    def hd_image_features(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None) -> DeepStackImageOutput:
        """Encode images under DeepStack-HD (LLaVA-NeXT's any-resolution view, plus stacks).

        ``pixel_values``: ``(I, V, 3, H, W)``; image ``i`` with ``T`` tiles holds its base image and tiles in
        views ``0..T`` (the "units"), then, for modes with a hi-res view, each unit's ``S`` hi-res crops
        (unit by unit, row-major); views past that are batch padding. ``image_sizes``: ``(I, 2)`` pixels
        (height, width) of each image before processing, which fix its tile grid. Every unit is encoded like a
        global view by the mode's ``VISION_SIDE`` entry; then each image's units are packed into the sequence
        order (base tokens, unpadded tile rows each ending in ``image_newline``; for the string modes the same
        for the units' hi-res grids, after the global tokens in ``global_hires_string``), and each stack the same
        way with zero rows at the newline positions, so stack row ``t`` belongs to image token ``t``.
        """
        config, mode = self.config, STACK_MODES[self.config.stack_mode]
        if image_sizes is None:
            raise ValueError(
                "DeepStack-HD (image_grid_pinpoints is set) needs image_sizes, each image's (height, width), with "
                "pixel_values; make the inputs with this model's DeepStackProcessor, which returns both"
            )
        if pixel_values.dim() != 5 or len(image_sizes) != pixel_values.shape[0]:
            raise ValueError(
                f"DeepStack-HD needs pixel_values (images, views, 3, H, W) and one (height, width) per image, got "
                f"pixel_values {tuple(pixel_values.shape)} and {len(image_sizes)} image_sizes"
            )
        layouts = [config.hd_layout(int(height), int(width)) for height, width in image_sizes.tolist()]
        crops_per_unit = config.num_stacks if mode.needs_hires else 0
        units = [1 + layout.num_tiles for layout in layouts]
        for index, count in enumerate(units):
            if count * (1 + crops_per_unit) > pixel_values.shape[1]:
                height, width = layouts[index].image_size
                raise ValueError(
                    f"image {index} ({height}x{width} pixels) has {count} base and tile views"
                    + (f" and {count * crops_per_unit} hi-res crops" if crops_per_unit else "")
                    + f", but pixel_values holds only {pixel_values.shape[1]} views per image; make the inputs with "
                    "this model's DeepStackProcessor (same image_grid_pinpoints, stack_mode and hires_scale)"
                )
        global_view = torch.cat([views[:count] for views, count in zip(pixel_values, units)])
        crops = None
        if config.needs_hires_view:  # the processor makes the crops for every hi-res mode; read them if used
            crops = torch.cat([views[n : n * (1 + crops_per_unit)] for views, n in zip(pixel_values, units)])
            crops = crops.unflatten(0, (-1, crops_per_unit))
        sequence, stacks = self.VISION_SIDE[config.stack_mode](self, global_view, crops)  # (U, T, D), (S, U, N, D)
        scales = mode.sequence_scales(config.hires_scale)  # the string modes: each unit's hi-res grid too
        per_image, per_stack = [], [[] for _ in range(0 if stacks is None else len(stacks))]
        start = 0
        for layout, count in zip(layouts, units):
            per_image.append(layout.pack(sequence[start : start + count], self.image_newline, scales))
            if stacks is not None:
                packed = layout.pack(stacks[:, start : start + count], stacks.new_zeros(stacks.shape[-1]))
                for k, rows in enumerate(packed):
                    per_stack[k].append(rows)
            start += count
        return DeepStackImageOutput(
            pooler_output=per_image,
            deepstack_features=None if stacks is None else per_stack,  # S entries of per-image (tokens, D)
        )

    @property
    def _tokens_per_image_text(self) -> str:
        if self.config.image_grid_pinpoints is not None:
            return "a number set by its size (DeepStack-HD)"
        return str(self.config.image_seq_length)

    # ---- the language side -------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict[str, DeepStackImageOutput] | None = None,
        image_sizes: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        image = (mm_encoder_outputs or {}).get("image")
        if image is not None and pixel_values is not None:
            raise ValueError("pass pixel_values or pre-encoded mm_encoder_outputs, not both")
        if image is None and pixel_values is not None:
            image = self.get_image_features(pixel_values, image_sizes=image_sizes)
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        positions, stacks = None, None
        if image is not None:
            if input_ids is None:
                raise ValueError("images need input_ids to find the image-token positions")
            positions = (input_ids == self.config.image_token_id).flatten().nonzero().squeeze(1)
            sequence = feature_rows(image.pooler_output)
            if sequence.shape[0] != positions.numel():
                raise ValueError(
                    f"the input holds {positions.numel()} image tokens (id {self.config.image_token_id}) but the "
                    f"images give {sequence.shape[0]} feature rows ({self._tokens_per_image_text} per image for "
                    f"stack_mode='{self.config.stack_mode}'); make the prompt with this model's DeepStackProcessor "
                    "and give one image per <image> placeholder"
                )
            flat = inputs_embeds.reshape(-1, inputs_embeds.shape[-1])
            inputs_embeds = flat.index_copy(0, positions, sequence.to(inputs_embeds.dtype)).view_as(inputs_embeds)
            if image.deepstack_features is not None:
                stacks = [feature_rows(stack) for stack in image.deepstack_features]  # no (S, M, D) copy
        elif input_ids is not None and _is_prefill(past_key_values):
            if (input_ids == self.config.image_token_id).any():
                raise ValueError(
                    "input_ids hold image tokens but no pixel_values (or mm_encoder_outputs) were given"
                )

        injection = (
            inject_stacks(
                self.decoder_layers, positions, stacks, self.config.stack_start_layer, self.config.stack_interval,
                self.config.stack_layers_per_stack,
            )
            if stacks is not None
            else nullcontext()
        )
        with injection:
            return self.language_model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                labels=labels,
                logits_to_keep=logits_to_keep,
                **{"return_dict": True, **kwargs},
            )


def feature_rows(per_image) -> torch.Tensor:
    """Per-image features (a list, or a tensor with a leading image axis) as one ``(rows, D)`` tensor; a
    contiguous tensor becomes a view, not a copy."""
    if isinstance(per_image, torch.Tensor):
        return per_image.reshape(-1, per_image.shape[-1])
    parts = list(per_image)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _new_image_newline(config: DeepStackConfig, like: nn.Module | None = None) -> nn.Parameter | None:
    """DeepStack-HD's learned row-end embedding (LLaVA-NeXT's ``image_newline``, std 1/sqrt(width)); ``None``
    without HD. ``like``: make it on that module's device and dtype."""
    if config.image_grid_pinpoints is None:
        return None
    width = config.text_config.hidden_size
    where = {} if like is None else {"device": next(like.parameters()).device, "dtype": next(like.parameters()).dtype}
    return nn.Parameter(torch.randn(width, **where) / width**0.5)


def _is_prefill(past_key_values) -> bool:
    return past_key_values is None or past_key_values.get_seq_length() == 0


__all__ = ["DeepStackForConditionalGeneration", "DeepStackImageOutput", "DeepStackPreTrainedModel"]

AutoModelForImageTextToText.register(DeepStackConfig, DeepStackForConditionalGeneration, exist_ok=True)
