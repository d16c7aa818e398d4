"""``DeepStackConfig``: a LLaVA-style config (vision_config, text_config, image_token_id, ...) plus the
DeepStack settings of docs/method.md. Settings that cannot work fail here, when the config is made."""

from __future__ import annotations

from typing import Literal

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ..method.sampling import SAMPLING_METHODS
from .modes import STACK_MODES


class DeepStackConfig(PreTrainedConfig):
    r"""Configuration of a [`DeepStackForConditionalGeneration`].

    LLaVA fields (same meaning as in transformers' ``LlavaConfig``): ``vision_config`` (any vision model
    config exposing hidden states, e.g. CLIP or SigLIP vision), ``text_config`` (any decoder-only causal LM),
    ``image_token_id``, ``vision_feature_layer`` (default -2), ``vision_feature_select_strategy``
    (``"default"`` drops the CLS token, ``"full"`` keeps every token; SigLIP has no CLS, use ``"full"``),
    ``projector_hidden_act``.

    DeepStack fields (docs/method.md):
        stack_mode: one of ``none | llm | vit | hires_string | global_hires_string | dim_concat | dummy``.
        stack_start_layer: ``l`` of Algorithm 1; stack k goes in before decoder layer ``l + k*n``.
        stack_interval: ``n`` of Algorithm 1.
        hires_scale: ``s``; the hi-res view is ``s`` times the encoder's input size, giving ``S = s*s`` stacks.
        stack_sampling: ``2d_spatial`` (dilated, default) | ``2d_grid`` | ``1d_sequential`` (Table 5).
        num_stack_layers: how many of the S stacks are injected (stacks 0..k-1, into k layers), for the
            injecting modes (``llm``, ``dummy``, ``vit``); ``None`` injects all S. Fig. 3c's ablation.
        vit_stack_start_layer: ``m`` for DeepStack-V; stack k goes in before encoder layer ``m + k``.
            ``None`` means two thirds of the encoder depth (16 of ViT-L's 24, the paper's best range), or
            the latest layer that leaves room for all S stacks before the feature layer if that is earlier.
    """

    model_type = "deepstack"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int | None = None
    vision_feature_layer: int = -2
    vision_feature_select_strategy: Literal["default", "full"] = "default"
    projector_hidden_act: str = "gelu"
    stack_mode: str = "llm"
    stack_start_layer: int = 1
    stack_interval: int = 1
    hires_scale: int = 2
    stack_sampling: str = "2d_spatial"
    num_stack_layers: int | None = None
    vit_stack_start_layer: int | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        if self.vit_stack_start_layer is None:
            layers = self.vision_config.num_hidden_layers
            latest = self.vision_feature_layer % (layers + 1) - self.num_injected_stacks
            self.vit_stack_start_layer = max(0, min((2 * layers) // 3, latest))
        self.validate_deepstack()

    # ---- derived sizes -------------------------------------------------------------------------------
    @property
    def num_stacks(self) -> int:
        """S = hires_scale**2: the hi-res view gives S groups of N tokens."""
        return self.hires_scale * self.hires_scale

    @property
    def num_injected_stacks(self) -> int:
        """How many stacks go into layers: ``num_stack_layers``, or all S when it is unset."""
        return self.num_stacks if self.num_stack_layers is None else self.num_stack_layers

    @property
    def image_grid(self) -> tuple[int, int]:
        """(h, w): the global view's patch grid."""
        side = self.vision_config.image_size // self.vision_config.patch_size
        return side, side

    @property
    def num_global_tokens(self) -> int:
        """N = h*w tokens of the global view."""
        h, w = self.image_grid
        return h * w

    @property
    def image_seq_length(self) -> int:
        """How many image tokens stand for one image in the LLM's input sequence under this mode."""
        return STACK_MODES[self.stack_mode].tokens_per_image(self.num_global_tokens, self.num_stacks)

    @property
    def num_visual_tokens_seen(self) -> int:
        """Distinct visual tokens per image that reach the LLM under this mode (sequence, stacks or channels)."""
        return STACK_MODES[self.stack_mode].visual_tokens_seen(
            self.num_global_tokens, self.num_stacks, self.num_injected_stacks
        )

    # ---- validation ----------------------------------------------------------------------------------
    def validate_deepstack(self) -> None:
        def fail(field: str, why: str) -> None:
            raise ValueError(f"DeepStackConfig.{field}={getattr(self, field)!r}: {why}")

        if self.stack_mode not in STACK_MODES:
            fail("stack_mode", f"unknown mode; choose one of {', '.join(STACK_MODES)}")
        if self.stack_sampling not in SAMPLING_METHODS:
            fail("stack_sampling", f"unknown sampling; choose one of {', '.join(SAMPLING_METHODS)}")
        if not isinstance(self.hires_scale, int) or self.hires_scale < 1:
            fail("hires_scale", "must be an integer >= 1 (2 gives the paper's 4 stacks)")
        if self.num_stack_layers is not None:
            if self.stack_mode not in ("llm", "dummy", "vit"):
                fail("num_stack_layers", "only the modes that inject stacks (llm, dummy, vit) use it; leave it unset")
            if not 1 <= self.num_stack_layers <= self.num_stacks:
                fail("num_stack_layers", f"must be between 1 and the {self.num_stacks} stacks of hires_scale={self.hires_scale}")
        if self.stack_interval < 1:
            fail("stack_interval", "must be >= 1")
        if self.stack_start_layer < 0:
            fail("stack_start_layer", "must be >= 0 (0 adds the first stack to the input embeddings)")
        if self.vision_feature_select_strategy not in ("default", "full"):
            fail("vision_feature_select_strategy", "must be 'default' (drop CLS) or 'full'")
        vision = self.vision_config
        if vision.image_size % vision.patch_size:
            raise ValueError(
                f"DeepStackConfig.vision_config: image_size={vision.image_size} is not a multiple of "
                f"patch_size={vision.patch_size}, so the image tokens do not form a grid to sample stacks from"
            )
        depth = self.text_config.num_hidden_layers
        if STACK_MODES[self.stack_mode].injects_into_llm:
            last = self.stack_start_layer + (self.num_injected_stacks - 1) * self.stack_interval
            if last >= depth:
                fail(
                    "stack_start_layer",
                    f"with stack_interval={self.stack_interval} and {self.num_injected_stacks} stacks (hires_scale="
                    f"{self.hires_scale}) the last stack would go before decoder layer {last}, but the LLM has "
                    f"only {depth} layers (0..{depth - 1}); lower the start, the interval or hires_scale",
                )
        if self.stack_mode == "vit":
            # the layer whose output is the image feature (vision_feature_layer indexes hidden_states,
            # whose entry 0 is the embeddings)
            layers = vision.num_hidden_layers
            feature_index = self.vision_feature_layer % (layers + 1)
            last = self.vit_stack_start_layer + self.num_injected_stacks - 1
            if self.vit_stack_start_layer < 0 or last >= feature_index:
                fail(
                    "vit_stack_start_layer",
                    f"{self.num_injected_stacks} stacks go before encoder layers {self.vit_stack_start_layer}..{last}, "
                    f"but the image feature is taken after layer {feature_index - 1} (vision_feature_layer="
                    f"{self.vision_feature_layer} of {layers} layers); choose a start <= "
                    f"{feature_index - self.num_injected_stacks}",
                )


__all__ = ["DeepStackConfig"]

AutoConfig.register(DeepStackConfig.model_type, DeepStackConfig, exist_ok=True)
