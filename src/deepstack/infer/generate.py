"""Answer a question about an image with a DeepStack model."""

from __future__ import annotations

import torch
from PIL import Image

from ..model.modeling import DeepStackForConditionalGeneration
from ..model.processing import DeepStackProcessor, displayed_size


@torch.inference_mode()
def answer(
    model: DeepStackForConditionalGeneration,
    processor: DeepStackProcessor,
    images: list[Image.Image | list[Image.Image]],
    questions: list[str],
    max_new_tokens: int = 32,
    **generate_kwargs,
) -> list[str]:
    """One answer per (image, question): the question is a user turn with the image in front of it, in the
    LLM's chat template when it has one; the batch is left-padded. A question about several images (the pages of
    a document) gets a list of them: their placeholders go in front of it in order, separated by spaces, as
    LLaVA's evaluation in lmms-eval writes them."""
    per_question = [list(image) if isinstance(image, (list, tuple)) else [image] for image in images]
    prompts = [user_prompt(processor, len(group), question) for group, question in zip(per_question, questions)]
    inputs = processor(images=per_question, text=prompts, use_chat_template=processor.template is not None,
                       padding_side="left")
    longest = int(inputs["attention_mask"].sum(dim=1).argmax())  # the padded length is this prompt's
    counts = [processor.num_image_tokens(*displayed_size(image)) for image in per_question[longest]]
    check_context(model, inputs["input_ids"].shape[1], max_new_tokens, counts)
    inputs = inputs.to(model.device)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, **generate_kwargs)
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return [text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]


def user_prompt(processor: DeepStackProcessor, image_count: int, question: str) -> str:
    """The user turn ``answer`` asks: one placeholder per image, separated by spaces, a new line, the question."""
    return " ".join([processor.image_token] * image_count) + f"\n{question}"


def rendered_prompt(processor: DeepStackProcessor, image_count: int, question: str) -> str:
    """The prompt ``answer`` gives the model: ``user_prompt`` as a user turn of the chat template when the LLM
    has one, else as it is."""
    prompt = user_prompt(processor, image_count, question)
    return prompt if processor.template is None else processor.format_prompt(prompt)


def check_context(
    model: DeepStackForConditionalGeneration, prompt_tokens: int, max_new_tokens: int,
    image_tokens: list[int] | None = None,
) -> None:
    """Refuse a prompt (text and image tokens) that, with the answer, is longer than the LLM's positions.
    ``image_tokens``: the image token count of each of the prompt's images, as the message names them (under
    DeepStack-HD each image's own count, ``processor.num_image_tokens``); ``None``: the model's fixed count."""
    context = getattr(model.config.text_config, "max_position_embeddings", None)
    if context is not None and prompt_tokens + max_new_tokens > context:
        if image_tokens is not None:
            images = image_token_text(image_tokens)
        elif model.config.image_grid_pinpoints is None:
            images = image_token_text([model.config.image_seq_length])
        else:
            images = " (each image's tokens set by its size: DeepStack-HD)"
        raise ValueError(
            f"the prompt takes {prompt_tokens} tokens{images} and the answer up to "
            f"{max_new_tokens} more, but the model has {context} positions (text_config.max_position_embeddings); "
            "shorten the question or lower max_new_tokens"
        )


def image_token_text(counts: list[int]) -> str:
    """The image tokens of a prompt as an error message says them: `` (16 per image)`` when every image takes
    the same count, `` (images: 70 + 56 tokens)`` when they differ (DeepStack-HD), nothing without images."""
    if not counts:
        return ""
    if len(set(counts)) == 1:
        return f" ({counts[0]} per image)"
    return f" (images: {' + '.join(map(str, counts))} tokens)"
