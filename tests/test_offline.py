"""Answering many questions with continuous batching (``infer.offline``, what ``deepstack eval`` runs): the
answers are those ``answer`` gives each question alone, in the questions' order, while rows finish at different
steps and the next questions join; a prompt given as it is must hold one placeholder per image."""

import pytest
import torch

from deepstack.infer.engine import Engine, Request, RequestError
from deepstack.infer.generate import answer, rendered_prompt
from deepstack.infer.offline import answer_stream
from tests.fixtures import random_image, sharpened, tiny

TOKENS = 8


@pytest.fixture(scope="module")
def parts():
    return sharpened(tiny("llm"))


def questions():
    images = [random_image(seed, size) for seed, size in ((0, (48, 40)), (1, (30, 64)), (2, (32, 32)))]
    asked = ["what is it?", "and this one, in more words than the others?", "colour?", "two of them", "what?", "?"]
    groups = [[images[0]], [images[1]], [images[2]], [images[0], images[1]], [images[1]], [images[2]]]
    return list(zip(groups, asked))


def test_answers_equal_answers_alone_while_rows_end_at_different_steps(parts):
    model, processor = parts
    asked, end = questions(), model.generation_config.eos_token_id
    runs = []
    for images, question in asked:
        inputs = processor(images=[images], text=[rendered_prompt(processor, len(images), question)])
        runs.append(model.generate(**inputs, max_new_tokens=TOKENS, do_sample=False)[0, inputs["input_ids"].shape[1]:])

    def lengths(token):  # the answers' lengths when ``token`` also ends a sequence
        return [next((i for i, t in enumerate(run.tolist()) if t in (end, token)), TOKENS) for run in runs]

    # a second end-of-sequence token that some greedy answers reach early and others not at all, so rows leave
    # the batch at different steps and waiting questions take their places
    token = max(torch.cat(runs).unique().tolist(), key=lambda token: len(set(lengths(token))))
    assert len(set(lengths(token))) > 2, f"answers {runs}: the test needs rows that end at different steps"
    model.generation_config.eos_token_id = [end, token]
    # each question alone through model.generate: its answer is the text of the tokens before the end (``answer``
    # gives the same with a real LLM, whose end tokens are special and dropped when decoding)
    alone = [processor.tokenizer.decode(run[:length], skip_special_tokens=True).strip()
             for run, length in zip(runs, lengths(token))]
    for batch_size in (1, 2, 4):
        assert list(answer_stream(model, processor, iter(asked), batch_size, TOKENS)) == alone
    model.generation_config.eos_token_id = end
    assert list(answer_stream(model, processor, iter(asked), 2, TOKENS)) == [
        answer(model, processor, [images], [question], max_new_tokens=TOKENS)[0] for images, question in asked]


def test_questions_are_read_as_answers_are_taken(parts):
    model, processor = parts
    read = []

    def lazily():
        for images, question in questions() * 3:
            read.append(question)
            yield images, question

    stream = answer_stream(model, processor, lazily(), batch_size=1, max_new_tokens=2)
    next(stream)
    assert len(read) <= 5  # the window (4 x batch 1) and the next question, not all 18
    assert len(list(stream)) == 17


def test_a_prompt_given_as_it_is_needs_one_placeholder_per_image(parts):
    model, processor = parts
    image = random_image(0)
    content = [{"type": "image", "image": image}, {"type": "text", "text": "what?"}]
    with Engine(model, processor, batch_wait_ms=0) as engine:
        with pytest.raises(RequestError, match=r"prompt holds 2 image placeholder.*1 image part") as error:
            engine.submit(Request([{"role": "user", "content": content}], prompt="<image> <image>\nwhat?"))
        assert error.value.param == "prompt"
        # the prompt as given, not the chat template's rendering: the plain user turn is shorter
        plain = engine.submit(Request([{"role": "user", "content": content}], max_tokens=1, prompt="<image>\nwhat?"))
        templated = engine.submit(Request([{"role": "user", "content": content}], max_tokens=1))
        assert plain.result(timeout=60).prompt_tokens < templated.result(timeout=60).prompt_tokens
    with pytest.raises(RequestError, match="prompt must be a string"):
        Request([{"role": "user", "content": "hi"}], prompt=3)
