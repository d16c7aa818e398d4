"""Answer a question about an image with a DeepStack model."""

from __future__ import annotations

import torch
from PIL import Image

from ..model.modeling import DeepStackForConditionalGeneration
from ..model.processing import DeepStackProcessor


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on a GPU that has it, the checkpoint's dtype otherwise."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


@torch.inference_mode()
def answer(
    model: DeepStackForConditionalGeneration,
    processor: DeepStackProcessor,
    images: list[Image.Image],
    questions: list[str],
    max_new_tokens: int = 32,
    **generate_kwargs,
) -> list[str]:
    """One answer per (image, question): the question is a user turn with the image in front of it, in the
    LLM's chat template when it has one; the batch is left-padded."""
    use_chat = (processor.chat_template or processor.tokenizer.chat_template) is not None
    prompts = [f"{processor.image_token}\n{question}" for question in questions]
    inputs = processor(images=images, text=prompts, use_chat_template=use_chat, padding_side="left")
    inputs = inputs.to(model.device)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, **generate_kwargs)
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return [text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]
