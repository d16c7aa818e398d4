"""Serve many requests with one model: a scheduler thread decodes the requests that arrive together as one batch.

Requests that arrive within ``batch_wait_ms`` of each other (up to ``max_batch_size``) are prefilled as one
left-padded batch and decoded together. A row leaves the batch when its request ends (end of sequence, a stop
string, ``max_tokens``, or its client cancelled), and requests that arrive while a batch runs are prefilled on
their own and join it between two decoding steps (continuous batching; with a plain ``DynamicCache``, else they
wait for the batch to end). Each request has its own stream of text deltas (a transformers ``BaseStreamer``)
and a final ``Completion``.

Padding changes nothing for a row: padded positions are masked out and each row's position ids count only its
own tokens, so a greedy answer in a batch is the answer the request gets alone, as with ``model.generate`` on a
left-padded batch. Sampling draws from a generator per request, so a ``seed`` gives the same answer whatever
else is in the batch.

Encoded images (the sequence features and the DeepStack stacks) are kept in a cache keyed by a hash of the
image, so a follow-up turn about the same image does not run the vision tower again; they are handed to the
model as pre-encoded ``mm_encoder_outputs={"image": ...}``. Under DeepStack-HD (docs/method.md, "DeepStack-HD")
each image takes its own number of tokens, set by its size: the prompt, the context check and
``prompt_tokens`` use each image's own count, and its cached rows (sequence and stacks, newline rows included)
follow the image-token order, row ``t`` for its ``t``-th image token, so a batch of images of different grids
is one ``mm_encoder_outputs`` like any other.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
import queue
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.generation.streamers import BaseStreamer

from ..model.builder import load_pretrained
from ..model.modeling import DeepStackForConditionalGeneration, DeepStackImageOutput
from ..model.processing import MAX_IMAGE_PIXELS, DeepStackProcessor, displayed_size, pad_views
from ..utils.device import pick_device, pick_dtype
from .generate import image_token_text

ROLES = ("system", "user", "assistant")


class RequestError(ValueError):
    """A request the engine cannot serve; ``param`` names the field (OpenAI's names: ``messages[0].content``,
    ``max_tokens``, ...) and ``code`` says what kind of problem it is."""

    def __init__(self, param: str | None, message: str, code: str = "invalid_value"):
        super().__init__(message)
        self.param, self.code = param, code


class EngineBusy(RuntimeError):
    """The queue of waiting requests is full; try again shortly."""


class EngineClosed(RuntimeError):
    """The engine was closed and takes no more requests."""


# ---- requests and answers ------------------------------------------------------------------------------
@dataclass
class Request:
    """One chat completion to make.

    ``messages``: ``{"role": "system" | "user" | "assistant", "content": ...}`` where content is a string or a
    list of parts ``{"type": "text", "text": str}``, ``{"type": "image", "image": PIL image or the bytes of
    an image file}`` and ``{"type": "video", "video": the bytes of a video file, or its frames as PIL images}``
    (a video reaches the model as one image, its frame mosaic: docs/video.md). ``temperature`` 0 is greedy decoding; ``max_tokens`` ``None`` is the engine's default
    (cut to what the context leaves); ``stop``: up to 4 strings that end the answer (not included in it).
    ``prompt``: the prompt exactly as the model is to read it, with one image placeholder per image part of
    ``messages`` in their order, used instead of the chat template's rendering of ``messages`` (evaluation asks
    each benchmark's own prompt this way: ``infer.offline``); ``None``: the template's.
    """

    messages: list[dict]
    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    stop: str | list[str] | tuple[str, ...] = ()
    seed: int | None = None
    prompt: str | None = None

    def __post_init__(self):
        def number(name, value, low, high, low_open=False):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise RequestError(name, f"{name} must be a number, got {shown(value)}", "invalid_type")
            if value < low or value > high or (low_open and value == low):
                bound = f"{'above' if low_open else 'at least'} {low} and at most {high}"
                raise RequestError(name, f"{name} must be {bound}, got {value}")

        number("temperature", self.temperature, 0, 2)
        number("top_p", self.top_p, 0, 1, low_open=True)
        for name in ("max_tokens", "seed"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise RequestError(name, f"{name} must be an integer, got {shown(value)}", "invalid_type")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise RequestError("max_tokens", f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:
            raise RequestError("seed", f"seed must fit in 64 bits, got {self.seed}")
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
            raise RequestError("stop", f"stop must be a non-empty string or a list of up to 4 of them, got "
                               f"{shown(self.stop)}")
        self.stop = tuple(stop)
        check_messages(self.messages)
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise RequestError("prompt", f"prompt must be a string or None, got {shown(self.prompt)}", "invalid_type")


def shown(value, limit: int = 60) -> str:
    """A value from a request, as an error message quotes it: cut short, since a client sent it."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_messages(messages) -> None:
    """Raise ``RequestError`` naming the first message or part that is not of the shape ``Request`` describes."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages", "messages must be a non-empty list of {role, content} objects", "invalid_type")
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise RequestError(where, f"{where} must be an object with role and content", "invalid_type")
        if message.get("role") not in ROLES:
            raise RequestError(f"{where}.role", f"{where}.role must be one of {', '.join(ROLES)}, got "
                               f"{shown(message.get('role'))}")
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise RequestError(f"{where}.content", f"{where}.content must be a string or a list of parts",
                               "invalid_type")
        for number, part in enumerate(content):
            place = f"{where}.content[{number}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                continue
            if (kind == "image" and isinstance(part.get("image"), (Image.Image, bytes))) or (
                    kind == "video" and _is_video(part.get("video"))):
                if message["role"] != "user":
                    raise RequestError(place, f"{place}: only user messages may hold images and videos")
                continue
            raise RequestError(place, f"{place} must be {{type: text, text: str}}, {{type: image, image: ...}} or "
                               "{type: video, video: ...}", "invalid_type")


def _is_video(video) -> bool:
    return isinstance(video, bytes) or (isinstance(video, (list, tuple)) and len(video) > 0
                                        and all(isinstance(frame, Image.Image) for frame in video))


@dataclass(frozen=True)
class Video:
    """A video part's content on its way to the model: the bytes of a video file or its frames."""

    content: bytes | tuple

    def mosaic(self, max_pixels: int) -> Image.Image:
        """The one image the model sees (docs/video.md): frames sampled uniformly, tiled, made square; scaled
        down to ``max_pixels`` where the frames are large (the model's views are far smaller anyway)."""
        from ..model.video_file import load_video_bytes, video_image  # PyAV only where a video is sent

        image = load_video_bytes(self.content) if isinstance(self.content, bytes) else video_image(list(self.content))
        if image.width * image.height > max_pixels:
            side = math.isqrt(max_pixels)
            image = image.resize((side, side), Image.Resampling.BICUBIC)
        return image


@dataclass
class Completion:
    """A finished answer. ``finish_reason``: ``stop`` (end of sequence or a stop string), ``length``
    (``max_tokens`` reached) or ``cancelled`` (the client went away)."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Stream(BaseStreamer):
    """The answer to one request as it is produced: iterate it (or ``async for`` over ``deltas()``) for the
    text deltas, then ``result()`` for the ``Completion``. The deltas always add up to the final text.

    The engine thread calls ``put`` with each new token; text that could still change is held back: a
    trailing incomplete UTF-8 character, and an ending that may be the start of a stop string.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...], prompt_tokens: int):
        self._tokenizer, self._stop, self.prompt_tokens = tokenizer, stop, prompt_tokens
        self.token_ids: list[int] = []
        self.text = ""  # what was handed out so far
        self.stopped = False  # a stop string was produced
        self.cancelled = False
        self._pending: list[str] = []
        self._completion: Completion | None = None
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    # ---- the engine's side ----
    def put(self, value) -> None:
        self.token_ids.extend(torch.as_tensor(value).flatten().tolist())
        decoded = self._tokenizer.decode(self.token_ids, skip_special_tokens=True)
        hits = [index for index in (decoded.find(stop) for stop in self._stop) if index >= 0]
        if hits:
            self.stopped = True
            self._hand_out(decoded[: min(hits)])
        else:
            self._hand_out(decoded[: len(decoded) - self._unsettled(decoded)])

    def _unsettled(self, text: str) -> int:
        """How many trailing characters may still change: a partial character or a stop string's start."""
        hold = len(text) - len(text.rstrip("\ufffd"))
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:size]):
                    hold = max(hold, size)
                    break
        return hold

    def _hand_out(self, settled: str) -> None:
        if settled.startswith(self.text) and len(settled) > len(self.text):
            delta, self.text = settled[len(self.text) :], settled
            self._notify(lambda: self._pending.append(delta))

    def end(self) -> None:
        if not self.stopped:  # what was held back as a possible stop string's start is part of the answer
            self._hand_out(self._tokenizer.decode(self.token_ids, skip_special_tokens=True).rstrip("\ufffd"))

    def finish(self, reason: str, completion_tokens: int) -> None:
        self.end()
        completion = Completion(self.text, reason, self.prompt_tokens, completion_tokens)
        self._notify(lambda: setattr(self, "_completion", completion))

    def fail(self, error: BaseException) -> None:
        self._notify(lambda: setattr(self, "_error", error))

    def _notify(self, change) -> None:
        with self._changed:
            change()
            self._changed.notify_all()
            waiters = list(self._waiters)
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that event loop is closed: its reader is gone
                pass

    # ---- the client's side ----
    @property
    def done(self) -> bool:
        return self._completion is not None or self._error is not None

    def cancel(self) -> None:
        """Stop generating for this request (the engine drops it at its next step)."""
        self.cancelled = True

    def _take(self) -> tuple[str, bool]:
        with self._changed:
            delta, self._pending = "".join(self._pending), []
            if not delta and self._error is not None:
                raise self._error
            return delta, self.done

    def __iter__(self) -> Iterator[str]:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending or self.done)
            delta, done = self._take()
            if delta:
                yield delta
            elif done:
                return

    async def deltas(self) -> AsyncIterator[str]:
        """The text deltas, for an asyncio caller (the event loop is never blocked)."""
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._changed:
            self._waiters.append(waiter)
        try:
            while True:
                delta, done = self._take()
                if delta:
                    yield delta
                elif done:
                    return
                else:
                    await waiter[1].wait()
                    waiter[1].clear()
        finally:
            with self._changed:
                self._waiters.remove(waiter)

    def result(self, timeout: float | None = None) -> Completion:
        with self._changed:
            if not self._changed.wait_for(lambda: self.done, timeout):
                raise TimeoutError(f"no answer within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._completion


# ---- images ----------------------------------------------------------------------------------------------
def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """The bytes of an image file as a fully loaded PIL image, or ``ValueError`` saying what is wrong. The
    size is checked from the header before any pixel is decoded (a decompression bomb costs nothing)."""
    too_large = "the image is {}x{} pixels, over the limit of {:,}; resize it"
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # over PIL's own limit, refused while reading the header
        raise ValueError(f"the image is over the limit of {max_pixels:,} pixels; resize it") from None
    except Exception:  # noqa: BLE001 - PIL's plugins raise many kinds of error on data they do not recognise
        raise ValueError("not an image PIL can read (PNG, JPEG, WebP, ...)") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ValueError(too_large.format(width, height, max_pixels))
        if width == 0 or height == 0:
            raise ValueError(f"the image is {width}x{height} pixels: nothing to see")
        try:
            image.load()
            return image.copy()
        except Exception as error:  # noqa: BLE001 - truncated or corrupt pixel data
            raise ValueError(f"unreadable or truncated image ({error})") from None


def image_key(image: Image.Image | bytes | Video) -> str:
    """The cache key of an image: a hash of the file's bytes, or of a PIL image's mode, size and pixels; of a
    video: of its file's bytes or of its frames."""
    digest = hashlib.sha256()
    frames = [image]
    if isinstance(image, Video):
        digest.update(b"video:")
        frames = [image.content] if isinstance(image.content, bytes) else image.content
    for frame in frames:
        if isinstance(frame, bytes):
            digest.update(b"file:" + frame)
        else:
            digest.update(f"pil:{frame.mode}:{frame.size}:".encode())
            digest.update(frame.tobytes())
    return digest.hexdigest()


@dataclass
class EncodedImage:
    """One image as the LLM takes it: ``sequence`` ``(tokens, D)`` and ``stacks`` ``(S, tokens, D)`` or ``None``
    for modes without stacks in the decoder; row ``t`` belongs to the image's ``t``-th image token. ``size``:
    the image's (height, width) as shown, which sets ``tokens`` under DeepStack-HD."""

    sequence: torch.Tensor
    stacks: torch.Tensor | None
    size: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.sequence, self.stacks) if t is not None)


@dataclass
class ImageViews:
    """One image still to encode: the processor's ``views`` ``(V, 3, H, W)`` and its (height, width) ``size``
    as shown (after its EXIF orientation), which fixes its token count under DeepStack-HD."""

    views: np.ndarray
    size: tuple[int, int]


class ImageCache:
    """Least-recently-used encoded images, at most ``max_bytes`` of features in all; safe across threads."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.nbytes = max_bytes, 0
        self._items: OrderedDict[str, EncodedImage] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> EncodedImage | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: str, item: EncodedImage) -> None:
        if item.nbytes > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                self.nbytes -= self._items.pop(key).nbytes
            self._items[key] = item
            self.nbytes += item.nbytes
            while self.nbytes > self.max_bytes:
                self.nbytes -= self._items.popitem(last=False)[1].nbytes


# ---- the engine ------------------------------------------------------------------------------------------
@dataclass
class _Job:
    """A request on its way through the engine."""

    request: Request
    stream: Stream
    input_ids: list[int]
    image_keys: list[str]
    images: dict[str, EncodedImage | ImageViews]  # encoded, or the processor's views still to encode
    max_tokens: int
    generator: torch.Generator | None  # for sampling; None for greedy decoding
    generated: int = 0


PREFIX_MIN = 8  # tokens: a shorter shared prompt head is prefilled with the rest of the prompt


@dataclass
class _Prefix:
    """A prompt head's tokens and each layer's keys and values for them, ``(1, heads, tokens, head_dim)``."""

    ids: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class _Batch:
    """Requests being decoded together: their KV cache, attention mask ``(B, L)``, next position ids ``(B,)``
    and the logits ``(B, V)`` of their next token."""

    jobs: list[_Job]
    cache: DynamicCache
    mask: torch.Tensor
    positions: torch.Tensor
    logits: torch.Tensor = field(default=None)


class Engine:
    """One model serving many requests: ``submit`` returns a ``Stream`` at once, ``generate`` waits for the
    ``Completion``. A thread runs the model; see the module docstring for how requests are batched.

    Args:
        max_batch_size: requests decoded together at most.
        batch_wait_ms: how long the first request of a batch waits for others to arrive.
        max_queue: requests waiting at most; ``submit`` raises ``EngineBusy`` beyond it.
        default_max_tokens: the answer length of a request without ``max_tokens``.
        image_cache_bytes: bytes of encoded images kept for later turns (0: none).
        max_image_pixels: images larger than this are refused (decompression bombs).
        share_prefix: keep the keys and values of the prompt head that prompts share (the chat template's system
            turn, up to the first image) and prefill only the rest of each prompt (``_shared_head``).
    """

    def __init__(
        self,
        model: DeepStackForConditionalGeneration,
        processor: DeepStackProcessor,
        *,
        max_batch_size: int = 8,
        batch_wait_ms: float = 5.0,
        max_queue: int = 64,
        default_max_tokens: int = 512,
        image_cache_bytes: int = 512 * 2**20,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        share_prefix: bool = True,
    ):
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError(f"max_batch_size ({max_batch_size}) and max_queue ({max_queue}) must be at least 1")
        self.model, self.processor, self.tokenizer = model.eval(), processor, processor.tokenizer
        self.max_batch_size, self.batch_wait = max_batch_size, batch_wait_ms / 1000
        self.default_max_tokens, self.max_image_pixels = default_max_tokens, max_image_pixels
        self.images = ImageCache(image_cache_bytes)
        generation = model.generation_config
        eos = generation.eos_token_id
        self.eos_ids = {eos} if isinstance(eos, int) else set(eos or ())
        self.pad_id = next(i for i in (generation.pad_token_id, self.tokenizer.pad_token_id, *self.eos_ids, 0)
                           if i is not None)
        self.suppress_ids = list(generation.suppress_tokens or ())
        # a head can be shared where new rows can be padded into a cache (no sliding-window layers: _joinable)
        self.share_prefix = share_prefix and _joinable(DynamicCache(config=model.config.text_config))
        self._prefix: _Prefix | None = None  # the shared prompt head's keys and values
        self.shared_tokens = 0  # prompt tokens taken from the shared head instead of prefilled, so far
        self.active = 0  # requests in the running batch
        self.largest_batch = 0  # the most requests decoded together so far
        self.joined = 0  # requests that joined a batch already running
        self._tokenizing = threading.Lock()
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=max_queue)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve_forever, name="deepstack-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_pretrained(cls, path, device: str = "auto", dtype: str = "auto", **options) -> Engine:
        """An engine over a saved model (``deepstack build`` or training output) on ``device`` in ``dtype``."""
        model, processor = load_pretrained(path)
        device = pick_device(device)
        dtype = pick_dtype(dtype, device)
        model.to(device=device, dtype=dtype) if dtype else model.to(device)
        return cls(model, processor, **options)

    @property
    def context(self) -> int | None:
        """The LLM's positions (prompt and answer together), or ``None`` when its config does not say."""
        return getattr(self.model.config.text_config, "max_position_embeddings", None)

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    # ---- the callers' side ----
    def submit(self, request: Request) -> Stream:
        """Check and tokenize ``request`` (raising ``RequestError`` for what cannot be served) and queue it."""
        if self._closed.is_set():
            raise EngineClosed("the engine is closed")
        job = self._prepare(request)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise EngineBusy(f"{self._queue.maxsize} requests are already waiting; try again shortly") from None
        return job.stream

    def generate(self, request: Request, timeout: float | None = None) -> Completion:
        return self.submit(request).result(timeout)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=30)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _prepare(self, request: Request) -> _Job:
        self._check_text_length(request.messages)
        prompt, parts = self._render(request.messages)
        if request.prompt is not None:
            prompt, placeholders = request.prompt, request.prompt.count(self.processor.image_token)
            if placeholders != len(parts):
                raise RequestError("prompt", f"the prompt holds {placeholders} image placeholder(s) "
                                   f"{self.processor.image_token!r} but the messages {len(parts)} image part(s); "
                                   "write one placeholder per image, in their order")
        keys, images = [], {}
        for place, image in parts:
            key = image_key(image)
            keys.append(key)
            if key not in images:
                images[key] = self.images.get(key) or self._views(place, image)
        sizes = [images[key].size for key in keys]
        counts = [self.processor.num_image_tokens(*size) for size in sizes]  # each image's own (DeepStack-HD)
        try:
            expanded = self.processor.expand_image_tokens(prompt, sizes)
        except ValueError:  # more placeholders than images: the chat template wrote some of its own
            raise RequestError("messages", "the rendered prompt holds more image placeholders than the request has "
                               "images; send images as image parts, not as text") from None
        with self._tokenizing:  # a fast tokenizer is not to be called from two threads at once
            input_ids = self.tokenizer(expanded, add_special_tokens=self.processor.template is None)["input_ids"]
        image_tokens = sum(token == self.processor.image_token_id for token in input_ids)
        if image_tokens != sum(counts):
            raise RequestError("messages", f"the text holds the image placeholder {self.processor.image_token!r}; "
                               "send images as image parts, not as text")
        max_tokens = self._answer_length(request, len(input_ids), counts)
        stream = Stream(self.tokenizer, request.stop, len(input_ids))
        generator = None
        if request.temperature > 0:
            seed = request.seed if request.seed is not None else secrets.randbits(63)
            generator = torch.Generator().manual_seed(seed % 2**64)
        return _Job(request, stream, input_ids, keys, images, max_tokens, generator)

    def _check_text_length(self, messages: list[dict]) -> None:
        """Refuse, before tokenizing it, text far longer than the context can hold (no token is 64 characters)."""
        if self.context is None:
            return
        characters = sum(
            len(message["content"]) if isinstance(message["content"], str)
            else sum(len(part["text"]) for part in message["content"] if part["type"] == "text")
            for message in messages
        )
        if characters > 64 * self.context:
            raise RequestError("messages", f"the messages hold {characters:,} characters, far more than the model's "
                               f"{self.context} positions can take; shorten them", "context_length_exceeded")

    def _render(self, messages: list[dict]) -> tuple[str, list[tuple[str, Image.Image | bytes | Video]]]:
        """The prompt text (with one placeholder per image or video) and the images in order, with where each
        is; a video takes one image's place (its mosaic)."""
        image_token, flat, images = self.processor.image_token, [], []
        for index, message in enumerate(messages):
            content = message["content"]
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            for number, part in enumerate(parts):
                if part["type"] == "image":
                    images.append((f"messages[{index}].content[{number}]", part["image"]))
                elif part["type"] == "video":
                    video = part["video"]
                    images.append((f"messages[{index}].content[{number}]",
                                   Video(video if isinstance(video, bytes) else tuple(video))))
                elif image_token in part["text"]:
                    raise RequestError(f"messages[{index}].content", f"the text holds the image placeholder "
                                       f"{image_token!r}; send images as image parts, not as text")
            flat.append({"role": message["role"], "content": [
                {"type": "image"} if part["type"] in ("image", "video") else part for part in parts]})
        if self.processor.template is None:  # a base LLM: the turns as plain text
            return "\n".join(_plain(message, image_token) for message in flat), images
        try:
            return self.processor.format_prompt(flat), images
        except Exception as error:  # the chat template refuses this conversation (e.g. roles out of order)
            raise RequestError("messages", f"the model's chat template refuses these messages: {error}") from None

    def _views(self, place: str, image: Image.Image | bytes | Video) -> ImageViews:
        code = "invalid_video" if isinstance(image, Video) else "invalid_image"
        try:
            if isinstance(image, Video):
                image = image.mosaic(self.max_image_pixels)
            if isinstance(image, bytes):
                image = decode_image(image, self.max_image_pixels)
            elif image.width * image.height > self.max_image_pixels:
                raise ValueError(f"the image is {image.width}x{image.height} pixels, over the limit of "
                                 f"{self.max_image_pixels:,}; resize it")
            return ImageViews(self.processor.image_views(image), displayed_size(image))
        except Exception as error:  # noqa: BLE001 - whatever an image does to PIL, it is this request's image
            raise RequestError(place, f"{place}: {error}", code) from None

    def _answer_length(self, request: Request, prompt_tokens: int, image_tokens: list[int]) -> int:
        context = self.context
        if context is None:
            return request.max_tokens or self.default_max_tokens
        if prompt_tokens >= context:
            raise RequestError("messages", f"the prompt takes {prompt_tokens} tokens{image_token_text(image_tokens)} "
                               f"but the model has {context} positions; shorten the conversation or send fewer or "
                               "smaller images", "context_length_exceeded")
        if request.max_tokens is None:
            return min(self.default_max_tokens, context - prompt_tokens)
        if prompt_tokens + request.max_tokens > context:
            raise RequestError("max_tokens", f"the prompt takes {prompt_tokens} tokens and max_tokens asks for "
                               f"{request.max_tokens} more, but the model has {context} positions; lower max_tokens "
                               f"to at most {context - prompt_tokens}", "context_length_exceeded")
        return request.max_tokens

    # ---- the engine thread ----
    def _serve_forever(self) -> None:
        while not self._closed.is_set():
            jobs = self._collect()
            if jobs:
                self._run(jobs)
        while True:  # refuse what is still queued
            try:
                self._queue.get_nowait().stream.fail(EngineClosed("the engine was closed"))
            except queue.Empty:
                return

    def _collect(self) -> list[_Job]:
        """The first waiting request and those that arrive within ``batch_wait`` of it."""
        try:
            jobs = [self._queue.get(timeout=0.1)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.batch_wait
        while len(jobs) < self.max_batch_size:
            try:
                jobs.append(self._queue.get(timeout=max(deadline - time.monotonic(), 0)))
            except queue.Empty:
                break
        return self._live(jobs)

    def _live(self, jobs: list[_Job]) -> list[_Job]:
        for job in jobs:
            if job.stream.cancelled:
                job.stream.finish("cancelled", 0)
        return [job for job in jobs if not job.stream.cancelled]

    def _take_waiting(self, room: int) -> list[_Job]:
        jobs = []
        while len(jobs) < room:
            try:
                jobs.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return self._live(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        """Decode ``jobs`` to the end, letting waiting requests join while there is room."""
        everyone = list(jobs)
        batch = self._start(jobs)
        try:
            while batch is not None and batch.jobs:
                self.active = len(batch.jobs)
                self.largest_batch = max(self.largest_batch, self.active)
                with torch.inference_mode():
                    tokens = self._deliver(batch, self._next_tokens(batch))
                    if batch.jobs:
                        batch.logits = self._decode_step(batch, tokens)
                    batch = self._admit(batch, everyone)
        except Exception as error:  # noqa: BLE001 - every request still going gets the error; the engine goes on
            for job in everyone:
                if not job.stream.done:
                    job.stream.fail(error)
        finally:
            self.active = 0

    def _admit(self, batch: _Batch, everyone: list[_Job]) -> _Batch | None:
        """``batch`` with the waiting requests that fit in it (continuous batching)."""
        room = self.max_batch_size - len(batch.jobs)
        if room == 0 or (batch.jobs and not _joinable(batch.cache)):
            return batch
        newcomers = self._take_waiting(room)
        everyone += newcomers
        joined = self._start(newcomers) if newcomers else None
        if joined is None:
            return batch
        if not batch.jobs:
            return joined
        self.joined += len(joined.jobs)
        return _join(batch, joined)

    def _start(self, jobs: list[_Job]) -> _Batch | None:
        try:
            with torch.inference_mode():
                return self._prefill(jobs)
        except Exception as error:  # noqa: BLE001
            for job in jobs:
                job.stream.fail(error)
            return None

    def _prefill(self, jobs: list[_Job]) -> _Batch:
        """Run the prompts of ``jobs`` as one batch; the result holds their first logits. The head they share
        with the cached one (``_shared_head``) is copied into each row's cache; the rest of each prompt is
        left-padded behind it, the padding masked (so it sits between the head and the rest: nothing changes)."""
        device = self.model.device
        shared = self._shared_head(jobs)
        cache = DynamicCache(config=self.model.config.text_config)
        if shared:
            for layer, (keys, values) in enumerate(self._prefix.layers):
                cache.update(keys[:, :, :shared].expand(len(jobs), -1, -1, -1).contiguous(),
                             values[:, :, :shared].expand(len(jobs), -1, -1, -1).contiguous(), layer)
            self.shared_tokens += shared * len(jobs)
        length = max(len(job.input_ids) for job in jobs) - shared
        ids = torch.full((len(jobs), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), shared + length), dtype=torch.long)
        mask[:, :shared] = 1
        for row, job in enumerate(jobs):
            rest = job.input_ids[shared:]
            ids[row, length - len(rest) :] = torch.tensor(rest)
            mask[row, shared + length - len(rest) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        extra = {}
        if any(job.image_keys for job in jobs):
            extra["mm_encoder_outputs"] = {"image": self._encode(jobs)}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True, logits_to_keep=1, **extra)
        return _Batch(jobs, cache, mask, positions[:, -1] + 1, out.logits[:, -1].float())

    def _shared_head(self, jobs: list[_Job]) -> int:
        """How many leading tokens of every prompt of ``jobs`` come from the cached prompt head (0: none).

        A prompt's head is its tokens before its first image, less its last token (which must be prefilled for
        the first logits). When the prompts share fewer than ``PREFIX_MIN`` tokens with the cached head, the head
        of the first prompt is computed (one forward pass, batch 1) and cached instead. Every prompt that starts
        with the cached head gets the same keys and values, so an answer does not depend on its batch."""
        if not self.share_prefix:
            return 0

        def head(ids: list[int]) -> int:
            return min(next((i for i, token in enumerate(ids) if token == self.processor.image_token_id), len(ids)),
                       len(ids) - 1)

        def common(ids: list[int], reference: list[int]) -> int:
            limit = min(head(ids), len(reference))
            return next((i for i in range(limit) if ids[i] != reference[i]), limit)

        if self._prefix is None or min(common(job.input_ids, self._prefix.ids) for job in jobs) < PREFIX_MIN:
            first = jobs[0].input_ids[: head(jobs[0].input_ids)]
            if len(first) < PREFIX_MIN or min(common(job.input_ids, first) for job in jobs) < PREFIX_MIN:
                return 0
            cache = DynamicCache(config=self.model.config.text_config)
            ids = torch.tensor([first], device=self.model.device)
            self.model(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache, use_cache=True,
                       logits_to_keep=1)
            self._prefix = _Prefix(first, [(layer.keys, layer.values) for layer in cache.layers])
        shared = min(common(job.input_ids, self._prefix.ids) for job in jobs)
        return shared if shared >= PREFIX_MIN else 0

    def _encode(self, jobs: list[_Job]) -> DeepStackImageOutput:
        """The images of ``jobs`` in (row, position) order, running the vision tower only on new ones."""
        missing = {}
        for job in jobs:
            for key, image in job.images.items():
                if isinstance(image, ImageViews):
                    cached = self.images.get(key)
                    if cached is not None:
                        job.images[key] = cached
                    else:
                        missing[key] = image
        if missing:
            out = self.model.get_image_features(**self._pixels(list(missing.values())))
            stacks = out.deepstack_features  # S entries, each image's rows at its index (HD: a list per stack)
            for index, (key, image) in enumerate(missing.items()):
                encoded = EncodedImage(out.pooler_output[index].clone(),
                                       None if stacks is None else torch.stack([stack[index] for stack in stacks]),
                                       image.size)
                self.images.put(key, encoded)
                missing[key] = encoded
            for job in jobs:
                job.images.update({key: missing[key] for key in job.images if key in missing})
        ordered = [job.images[key] for job in jobs for key in job.image_keys]
        has_stacks = ordered[0].stacks is not None
        return DeepStackImageOutput(
            pooler_output=[image.sequence for image in ordered],
            deepstack_features=[[image.stacks[k] for image in ordered] for k in range(ordered[0].stacks.shape[0])]
            if has_stacks else None,
        )

    def _pixels(self, images: list[ImageViews]) -> dict[str, torch.Tensor]:
        """``get_image_features``' inputs for ``images``: their views stacked, and under DeepStack-HD (a number
        of views per image) zero-padded to the most with each image's (height, width) in ``image_sizes``."""
        device = self.model.device
        if self.model.config.image_grid_pinpoints is None:
            return {"pixel_values": torch.from_numpy(np.stack([image.views for image in images])).to(device)}
        return {
            "pixel_values": pad_views([torch.from_numpy(image.views) for image in images]).to(device),
            "image_sizes": torch.tensor([image.size for image in images], dtype=torch.long),
        }

    def _next_tokens(self, batch: _Batch) -> torch.Tensor:
        """Each row's next token: the argmax for greedy rows, a draw from the request's generator otherwise
        (temperature, then nucleus ``top_p`` filtering)."""
        logits = batch.logits
        if self.suppress_ids:
            logits[:, self.suppress_ids] = -float("inf")
        tokens = logits.argmax(-1)
        sampled = [row for row, job in enumerate(batch.jobs) if job.generator is not None]
        if sampled:
            rows = torch.tensor(sampled, device=logits.device)
            jobs = [batch.jobs[row] for row in sampled]
            temperature = torch.tensor([job.request.temperature for job in jobs], device=logits.device)
            top_p = torch.tensor([job.request.top_p for job in jobs], device=logits.device)
            scaled = logits[rows] / temperature.clamp(min=1e-4)[:, None]  # a vanishing temperature is greedy
            probs, order = scaled.softmax(-1).sort(-1, descending=True)
            probs = probs * ((probs.cumsum(-1) - probs) < top_p[:, None])  # the smallest set reaching top_p
            cumulative = probs.cumsum(-1)
            draws = torch.tensor([torch.rand(1, generator=job.generator).item() for job in jobs],
                                 device=logits.device, dtype=cumulative.dtype)
            picked = torch.searchsorted(cumulative, (draws * cumulative[:, -1])[:, None], right=True)
            tokens[rows] = order.gather(-1, picked.clamp(max=order.shape[-1] - 1)).squeeze(-1)
        return tokens

    def _deliver(self, batch: _Batch, tokens: torch.Tensor) -> torch.Tensor:
        """Hand each row its token; rows whose request ended leave the batch (and its cache). Returns the
        tokens of the rows that go on."""
        keep = []
        for row, (job, token) in enumerate(zip(batch.jobs, tokens.tolist())):
            job.generated += 1
            if token not in self.eos_ids:
                job.stream.put(torch.tensor([token]))
            if token in self.eos_ids or job.stream.stopped:
                job.stream.finish("stop", job.generated)
            elif job.generated >= job.max_tokens:
                job.stream.finish("length", job.generated)
            elif job.stream.cancelled:
                job.stream.finish("cancelled", job.generated)
            else:
                keep.append(row)
        if len(keep) < len(batch.jobs):
            batch.jobs = [batch.jobs[row] for row in keep]
            if keep:
                index = torch.tensor(keep, device=batch.mask.device)
                batch.cache.batch_select_indices(index)
                batch.mask, batch.positions = batch.mask[index], batch.positions[index]
            tokens = tokens[keep]
        return tokens

    def _decode_step(self, batch: _Batch, tokens: torch.Tensor) -> torch.Tensor:
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch.jobs), 1))], dim=1)
        out = self.model(input_ids=tokens[:, None], attention_mask=batch.mask, position_ids=batch.positions[:, None],
                         past_key_values=batch.cache, use_cache=True)
        batch.positions = batch.positions + 1
        return out.logits[:, -1].float()


def _plain(message: dict, image_token: str) -> str:
    return "".join(image_token + "\n" if part["type"] == "image" else part["text"] for part in message["content"])


def _joinable(cache) -> bool:
    """Whether new rows can be padded into this cache: only plain full-attention layers (a sliding-window
    layer keeps a window whose start would move)."""
    return type(cache) is DynamicCache and all(type(layer) is DynamicLayer for layer in cache.layers)


def _join(running: _Batch, newcomers: _Batch) -> _Batch:
    """One batch of both: the shorter caches and masks are padded on the left (masked, so nothing changes)."""
    length = max(running.mask.shape[1], newcomers.mask.shape[1])

    def pad(tensor: torch.Tensor, dim: int) -> torch.Tensor:
        missing = length - tensor.shape[dim]
        if missing == 0:
            return tensor
        widths = [0, 0] * (tensor.dim() - 1 - dim) + [missing, 0]
        return F.pad(tensor, widths)

    for old, new in zip(running.cache.layers, newcomers.cache.layers):
        old.keys = torch.cat([pad(old.keys, 2), pad(new.keys, 2)])
        old.values = torch.cat([pad(old.values, 2), pad(new.values, 2)])
    running.jobs = running.jobs + newcomers.jobs
    running.mask = torch.cat([pad(running.mask, 1), pad(newcomers.mask, 1)])
    running.positions = torch.cat([running.positions, newcomers.positions])
    running.logits = torch.cat([running.logits, newcomers.logits])
    return running


__all__ = [
    "Completion", "Engine", "EngineBusy", "EngineClosed", "Request", "RequestError", "Stream", "decode_image", "shown",
]
