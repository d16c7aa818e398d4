"""lmms-eval's ``deepstack`` model: a saved DeepStack model evaluated by lmms-eval, the harness the paper evaluated
with (Appendix A.2), on any image task lmms-eval knows:

    lmms-eval --model deepstack --model_args pretrained=runs/my-model --tasks textvqa_val,docvqa_val

deepstack registers it through the ``lmms_eval.models`` entry point (pyproject.toml); lmms-eval loads this module,
which imports lmms-eval, nothing else of deepstack does (install both with scripts/setup_lmms_eval.sh).

``generate_until`` asks each question as ``deepstack eval`` does (the images' placeholders in front of the task's
text, the chat template; greedy answers decoded with the serving engine's continuous batching,
``infer.offline.answer_stream``), so a question gets the same answer here as there, in a batch or alone; a task
that samples or searches beams decodes fixed batches (``infer.generate.answer``). ``loglikelihood`` scores a continuation after
the same prompt (its mean token loss, lmms-eval's convention). One process, one device; ``--model_args`` takes
``pretrained`` (a folder saved by deepstack), ``device``, ``dtype`` (as ``deepstack eval``), ``batch_size`` and
``max_new_tokens`` (for tasks that set none).
"""

from __future__ import annotations

import json

import torch
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from PIL import Image
from tqdm.auto import tqdm

from ..infer.generate import answer, check_context, user_prompt
from ..infer.offline import answer_stream
from ..model.builder import load_pretrained
from ..utils.device import pick_device, pick_dtype

MODEL_ID = "deepstack"
DEFAULT_MAX_NEW_TOKENS = 32  # deepstack eval's; lmms-eval's short-answer tasks set their own


def manifest() -> ModelManifest:
    """What the ``lmms_eval.models`` entry point gives lmms-eval: the model's name and class."""
    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.DeepStackLMMS")


class DeepStackLMMS(lmms):
    """A saved DeepStack model behind lmms-eval's model interface (a "simple" model: text prompts, images
    from the task's ``doc_to_visual``)."""

    is_simple = True

    def __init__(
        self,
        pretrained: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int | str = 1,
        max_new_tokens: int | str = DEFAULT_MAX_NEW_TOKENS,
        **unknown,
    ) -> None:
        super().__init__()
        unknown.pop("max_batch_size", None)  # lmms-eval passes it to every model; it serves batch_size=auto only
        if unknown:
            raise ValueError(
                f"--model_args: unknown argument(s) {', '.join(sorted(unknown))}; the deepstack model takes "
                "pretrained, device, dtype, batch_size and max_new_tokens"
            )
        if not pretrained:
            raise ValueError("--model_args: give pretrained=FOLDER, a model saved by deepstack (deepstack build, "
                             "deepstack train)")
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.max_new_tokens = _positive_int(max_new_tokens, "max_new_tokens")
        self.device = pick_device(device)
        self.model, self.processor = load_pretrained(pretrained)
        chosen = pick_dtype(dtype, self.device)
        self.model.to(device=self.device, dtype=chosen) if chosen else self.model.to(self.device)

    # ---- requests ----------------------------------------------------------------------------------
    def _images(self, request: Instance) -> list[Image.Image]:
        """The images of a request's document, from the task's ``doc_to_visual``."""
        task, split, doc_id = request.args[-2], request.args[-1], request.args[-3]
        visuals = request.args[2](self.task_dict[task][split][doc_id])
        visuals = [] if visuals is None else list(visuals)
        others = sorted({type(visual).__name__ for visual in visuals if not isinstance(visual, Image.Image)})
        if others:
            raise ValueError(
                f"task {task}, document {doc_id}: the deepstack model answers about images, but this task gives "
                f"{', '.join(others)} (video or audio); choose an image task"
            )
        return visuals

    def _question(self, context: str) -> str:
        """The task's text; placeholders in it are dropped, since the images go in front (as ``deepstack eval``
        asks)."""
        token = self.processor.image_token
        return context.replace(token, "").strip() if token in context else context

    def _batches(self, indices: list[int], lengths: list[int]):
        """``indices`` in batches of ``batch_size``, longest text first so that a batch holds similar lengths."""
        ordered = sorted(indices, key=lambda index: -lengths[index])
        for begin in range(0, len(ordered), self.batch_size):
            yield ordered[begin : begin + self.batch_size]

    # ---- generation --------------------------------------------------------------------------------
    def _generation(self, settings: dict) -> tuple[list[str], int, dict]:
        """A task's ``generation_kwargs`` as (stop strings, max_new_tokens, ``generate`` keywords): greedy
        unless ``temperature`` > 0 (lmms-eval's convention), then sampling with it and ``top_p``."""
        until = settings.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new_tokens = _positive_int(settings.get("max_new_tokens", self.max_new_tokens), "max_new_tokens")
        temperature = float(settings.get("temperature") or 0.0)
        kwargs = {"do_sample": False}
        if temperature > 0:
            kwargs = {"do_sample": True, "temperature": temperature}
            if settings.get("top_p") is not None:
                kwargs["top_p"] = float(settings["top_p"])
        if int(settings.get("num_beams") or 1) > 1:
            kwargs["num_beams"] = int(settings["num_beams"])
        return until, max_new_tokens, kwargs

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Each request's answer, cut before the first of its task's stop strings (``until``)."""
        answers: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}  # a batch shares one set of generation settings
        for index, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(index)
        lengths = [len(request.args[0]) for request in requests]
        with tqdm(total=len(requests), desc="deepstack", disable=self.rank != 0) as bar:
            for indices in groups.values():
                until, max_new_tokens, kwargs = self._generation(requests[indices[0]].args[1])
                for index, text in self._decoded(requests, indices, lengths, max_new_tokens, kwargs):
                    answers[index] = _cut(text, until)
                    self.cache_hook.add_partial("generate_until", requests[index].args[:2], answers[index])
                    bar.update(1)
        return answers

    def _decoded(self, requests: list[Instance], indices: list[int], lengths: list[int], max_new_tokens: int,
                 kwargs: dict):
        """(index, answer) for the requests at ``indices``, which share their generation settings: greedy answers
        through continuous batching, as ``deepstack eval`` decodes them; sampling or beams in fixed batches."""
        if kwargs == {"do_sample": False}:
            questions = ((self._images(requests[i]), self._question(requests[i].args[0])) for i in indices)
            yield from zip(indices, answer_stream(self.model, self.processor, questions, self.batch_size,
                                                  max_new_tokens))
            return
        for batch in self._batches(indices, lengths):
            texts = answer(self.model, self.processor, [self._images(requests[i]) for i in batch],
                           [self._question(requests[i].args[0]) for i in batch], max_new_tokens=max_new_tokens,
                           **kwargs)
            yield from zip(batch, texts)

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("the deepstack model answers one question per request; multi-round tasks are "
                                  "not supported")

    # ---- likelihood --------------------------------------------------------------------------------
    def _continuation(self, request: Instance) -> str:
        """The text to score: a string (multiple choice) or, for loglikelihood tasks, ``doc_to_target(doc)``."""
        target = request.args[1]
        if isinstance(target, str):
            return target
        task, split, doc_id = request.args[-2], request.args[-1], request.args[-3]
        return str(target(self.task_dict[task][split][doc_id]))

    def _rendered(self, images: list[Image.Image], context: str) -> str:
        """The prompt ``answer`` gives the model for this question, as text (chat template applied)."""
        prompt = user_prompt(self.processor, len(images), self._question(context))
        return self.processor.format_prompt(prompt) if self.processor.template is not None else prompt

    def _encode(self, images: list[list[Image.Image]], texts: list[str]):
        plain = self.processor.template is None  # a chat template writes its own special tokens
        return self.processor(images=images, text=texts, add_special_tokens=plain, padding_side="right")

    @torch.inference_mode()
    def loglikelihood(self, requests: list[Instance]) -> list[Likelihood]:
        """``(loss, greedy)`` per request: the mean negative log-probability of the continuation's tokens after
        the prompt ``generate_until`` would give (their cross-entropy), and whether greedy decoding picks every
        one of them.

        The loss, not the summed log-probability lm-evaluation-harness returns, is lmms-eval's convention: its
        LLaVA models return it and its multiple-choice scoring takes the choice with the smallest. The
        continuation's tokens are those of prompt + continuation past the prompt's own tokens (as the harness
        counts them). Batches are right-padded, which leaves every position's logits as they are alone."""
        results: list[Likelihood | None] = [None] * len(requests)
        lengths = [len(request.args[0]) + len(str(request.args[1])) for request in requests]
        with tqdm(total=len(requests), desc="deepstack", disable=self.rank != 0) as bar:
            for batch in self._batches(list(range(len(requests))), lengths):
                images = [self._images(requests[i]) for i in batch]
                prompts = [self._rendered(group, requests[i].args[0]) for group, i in zip(images, batch)]
                continuations = [self._continuation(requests[i]) for i in batch]
                whole = self._encode(images, [p + c for p, c in zip(prompts, continuations)])
                prompt_lengths = [int(self._encode([group], [prompt])["attention_mask"].sum())
                                  for group, prompt in zip(images, prompts)]
                whole_lengths = whole["attention_mask"].sum(dim=1).tolist()
                check_context(self.model, max(whole_lengths), 0)
                if min(prompt_lengths) == 0:
                    raise ValueError("an empty prompt without a chat template leaves the continuation's first token "
                                     "nothing to follow; give a context or a model whose tokenizer has a template")
                logits = self.model(**whole.to(self.device)).logits
                for row, index in enumerate(batch):
                    begin, end = prompt_lengths[row], int(whole_lengths[row])
                    tokens = whole["input_ids"][row, begin:end].to(self.device)
                    predicted = logits[row, begin - 1 : end - 1].float().log_softmax(dim=-1)
                    loss = -predicted.gather(1, tokens[:, None]).mean().item() if len(tokens) else 0.0
                    results[index] = Likelihood(loss, bool((predicted.argmax(dim=-1) == tokens).all()))
                    self.cache_hook.add_partial("loglikelihood", requests[index].args[:2], results[index])
                bar.update(len(batch))
        return results


class Likelihood(tuple, GenerationResult):
    """``(loss, greedy)``, the pair ``loglikelihood`` gives lmms-eval for a continuation.

    lmms-eval 0.7's evaluator keeps a response as it is only when it is text or a ``GenerationResult`` and
    writes anything else as a string (``unwrap_generation_output``), which breaks its multiple-choice scoring
    for every model. This pair is also a ``GenerationResult`` whose ``text`` is the pair itself, so it reaches
    the task's scoring intact; to everything else it is a plain tuple.
    """

    token_counts = None

    def __new__(cls, loss: float, greedy: bool) -> Likelihood:
        return super().__new__(cls, (float(loss), bool(greedy)))

    def __init__(self, loss: float, greedy: bool) -> None:
        pass  # __new__ made the pair; GenerationResult's two fields are read from it

    @property
    def text(self) -> tuple[float, bool]:
        return tuple(self)


def _cut(text: str, until: list[str]) -> str:
    """``text`` up to the first stop string in it."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text.strip()


def _positive_int(value, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or str(number) != str(value).strip():
        automatic = " (the deepstack model does not size its batches itself)" if name == "batch_size" else ""
        raise ValueError(f"{name} is {value!r}; give a whole number of at least 1{automatic}")
    return number
