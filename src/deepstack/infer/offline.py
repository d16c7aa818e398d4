"""Answer many questions at once (evaluation): the serving engine's continuous batching over a stream of
questions, answers handed back in the questions' order.

``answer`` (``infer.generate``) decodes a fixed batch until its longest answer ends, so rows whose answer is
over keep being computed, and a batch waits for its slowest row. Here up to ``batch_size`` questions are decoded
together by the ``Engine``: a row leaves as soon as its answer ends and the next question is prefilled and joins
between two decoding steps, so every step works on questions still being answered. The prompt of each question is
``answer``'s (``rendered_prompt``), and a greedy answer does not depend on its batch (the engine's padding and
position ids), so the answers are ``answer``'s.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

from PIL import Image

from ..model.modeling import DeepStackForConditionalGeneration
from ..model.processing import DeepStackProcessor
from .engine import Engine, Request, Stream
from .generate import rendered_prompt

WINDOW = 4  # questions handed to the engine ahead of the answer being waited for, per batch row


def answer_stream(
    model: DeepStackForConditionalGeneration,
    processor: DeepStackProcessor,
    questions: Iterable[tuple[list[Image.Image], str]],
    batch_size: int = 16,
    max_new_tokens: int = 32,
) -> Iterator[str]:
    """Greedy answers to ``questions`` (each: its images, and the question), in their order, decoded up to
    ``batch_size`` at a time with continuous batching. Questions are read from the iterable as the answers are
    taken (``WINDOW`` x ``batch_size`` ahead at most), so images can be loaded lazily. A question that cannot be
    asked (a prompt longer than the context) raises the engine's ``RequestError`` when it is reached."""
    if batch_size < 1:
        raise ValueError(f"batch_size is {batch_size}; it must be at least 1")
    window = WINDOW * batch_size
    with Engine(model, processor, max_batch_size=batch_size, max_queue=window, batch_wait_ms=0.0,
                default_max_tokens=max_new_tokens) as engine:
        pending = deque()
        for images, question in questions:
            if len(pending) == window:
                yield _text(processor, pending.popleft())
            pending.append(engine.submit(_request(processor, images, question, max_new_tokens)))
        while pending:
            yield _text(processor, pending.popleft())


def _text(processor: DeepStackProcessor, stream: Stream) -> str:
    """The answer's text as ``answer`` decodes it (a character cut short by the token limit kept as U+FFFD,
    where the engine's stream holds it back)."""
    stream.result()
    return processor.tokenizer.decode(stream.token_ids, skip_special_tokens=True).strip()


def _request(processor: DeepStackProcessor, images: list[Image.Image], question: str, max_new_tokens: int) -> Request:
    content = [{"type": "image", "image": image} for image in images] + [{"type": "text", "text": question}]
    return Request([{"role": "user", "content": content}], max_tokens=max_new_tokens,
                   prompt=rendered_prompt(processor, len(images), question))
