"""OpenAI Chat Completions bodies in, the engine's ``Request`` out; ``Completion`` and text deltas back as
OpenAI's ``chat.completion`` objects and ``chat.completion.chunk`` events.

Every refusal is an ``APIError`` whose body is OpenAI's ``{"error": {"message", "type", "param", "code"}}``,
with ``param`` the field at fault in OpenAI's notation (``messages[0].content[1].image_url.url``).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..infer.engine import Completion, Request, RequestError, shown

SUPPORTED_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class APIError(Exception):
    """An HTTP error with OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def invalid(param: str | None, message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param, code)


@dataclass
class ImageRules:
    """Where images may come from and how big they may be.

    ``root``: the folder ``file://`` URLs and plain paths must lie in (``None``: no local files);
    ``allow_remote``: fetch ``http(s)://`` URLs (off: a server should not fetch what clients name unless asked).
    """

    root: Path | None = None
    allow_remote: bool = False
    max_images: int = 8
    max_bytes: int = 20 * 2**20
    remote_timeout: float = 10.0

    def __post_init__(self):
        self.root = None if self.root is None else Path(self.root).resolve()


@dataclass
class ChatCall:
    """A parsed chat completion call: the engine's request and how to answer it."""

    request: Request
    stream: bool = False
    include_usage: bool = False
    model: str | None = None
    length_name: str = "max_tokens"  # or max_completion_tokens, the newer name, when the client used it
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise invalid(None, f"the request body is not valid JSON ({str(error)[:200]})", "invalid_json") from None
    if not isinstance(body, dict):
        raise invalid(None, f"the request body must be a JSON object, got {type(body).__name__}", "invalid_type")
    return body


def chat_call(body: dict, images: ImageRules) -> ChatCall:
    """The engine request of a ``/v1/chat/completions`` body; images are read (not yet decoded) here."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise invalid("model", "model must be a string", "invalid_type")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise invalid("stream", "stream must be true or false", "invalid_type")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise invalid("stream_options", "stream_options must be an object like {\"include_usage\": true}",
                      "invalid_type")
    refuse_unsupported(body)
    messages = parse_messages(body, images)
    length_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    try:
        request = Request(
            messages,
            max_tokens=body.get(length_name),
            temperature=0.0 if body.get("temperature") is None else body["temperature"],
            top_p=1.0 if body.get("top_p") is None else body["top_p"],
            stop=body.get("stop") or (),
            seed=body.get("seed"),
        )
    except RequestError as error:
        raise refusal(error, length_name) from None
    return ChatCall(request, bool(stream), options.get("include_usage", False), model, length_name)


def refusal(error: RequestError, length_name: str = "max_tokens") -> APIError:
    """The 400 of a request the engine refuses, in the names the client used (``max_completion_tokens``)."""
    param = length_name if error.param == "max_tokens" else error.param
    return invalid(param, str(error).replace("max_tokens", length_name), error.code)


def refuse_unsupported(body: dict) -> None:
    """Fields whose non-default values this server cannot honour are refused, not silently ignored."""
    if body.get("n", 1) not in (1, None):
        raise invalid("n", "n must be 1: this server makes one choice per request", "unsupported_value")
    if body.get("tools") or body.get("functions"):
        raise invalid("tools", "tools and functions are not supported by this server", "unsupported_value")
    if body.get("logprobs"):
        raise invalid("logprobs", "logprobs are not supported by this server", "unsupported_value")
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise invalid("response_format", "only response_format {\"type\": \"text\"} is supported", "unsupported_value")


def parse_messages(body: dict, images: ImageRules) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "messages must be a non-empty list of {role, content} objects", "invalid_type")
    count = 0
    parsed = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise invalid(where, f"{where} must be an object with role and content", "invalid_type")
        role = message.get("role")
        if not isinstance(role, str) or role not in SUPPORTED_ROLES:
            tools = " (this server has no tools)" if role in ("tool", "function") else ""
            raise invalid(f"{where}.role", f"{where}.role must be one of {', '.join(SUPPORTED_ROLES)}, got "
                          f"{shown(role)}{tools}")
        content = message.get("content")
        if isinstance(content, str):
            parsed.append({"role": SUPPORTED_ROLES[role], "content": content})
            continue
        if not isinstance(content, list):
            raise invalid(f"{where}.content", f"{where}.content must be a string or a list of content parts",
                          "invalid_type")
        parts = []
        for number, part in enumerate(content):
            place = f"{where}.content[{number}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise invalid(f"{place}.text", f"{place}.text must be a string", "invalid_type")
                parts.append({"type": "text", "text": part["text"]})
            elif kind in ("image_url", "video_url"):
                media = kind[: -len("_url")]
                if role != "user":
                    raise invalid(place, f"{place}: only user messages may hold images and videos")
                count += 1
                if count > images.max_images:
                    raise invalid("messages", f"the messages hold more than {images.max_images} images and videos, "
                                  "the most this server takes per request", "too_many_images")
                parts.append({"type": media, media: read_image(place, part.get(kind), images, media)})
            else:
                raise invalid(f"{place}.type", f"{place}.type must be \"text\", \"image_url\" or \"video_url\", "
                              f"got {shown(kind)}", "invalid_type" if kind is None else "unsupported_value")
        parsed.append({"role": SUPPORTED_ROLES[role], "content": parts})
    return parsed


# ---- images and videos ------------------------------------------------------------------------------------
def read_image(place: str, image_url, rules: ImageRules, kind: str = "image") -> bytes:
    """The bytes of the image (or, with ``kind="video"``, the video) a part names: a ``data:`` URL, a file under
    ``rules.root``, or (when allowed) an ``http(s)`` URL. Decoding them is the engine's job."""
    field_name = f"{kind}_url"
    if isinstance(image_url, dict):
        url, place = image_url.get("url"), f"{place}.{field_name}.url"
    else:
        url, place = image_url, f"{place}.{field_name}"
    if not isinstance(url, str) or not url:
        raise invalid(place, f"{place} must be a non-empty string (a data: URL, a file path or a URL)", "invalid_type")
    if url.startswith("data:"):
        return data_url(place, url, rules.max_bytes, kind)
    scheme = urlparse(url).scheme.lower()
    if scheme in ("http", "https"):
        if not rules.allow_remote:
            raise invalid(place, f"{place}: this server does not fetch remote {kind}s; send the {kind} as a "
                          f"data:{kind}/...;base64 URL (or start the server with --allow-remote-images)",
                          f"remote_{kind}s_disabled")
        return fetch(place, url, rules, kind)
    if scheme == "file":
        return local_file(place, unquote(urlparse(url).path), rules, kind)
    if scheme and len(scheme) > 1:  # a one-letter scheme is a Windows drive
        raise invalid(place, f"{place}: unsupported URL scheme {shown(scheme)}; use a data: URL", "unsupported_value")
    return local_file(place, url, rules, kind)


def data_url(place: str, url: str, max_bytes: int, kind: str = "image") -> bytes:
    header, comma, payload = url.partition(",")
    example = "data:image/png;base64,<data>" if kind == "image" else "data:video/mp4;base64,<data>"
    if not comma or not header.endswith(";base64"):
        raise invalid(place, f"{place}: a data URL must look like {example}", f"invalid_{kind}")
    mime = header[len("data:") : -len(";base64")].split(";")[0].strip().lower()
    if mime and not mime.startswith(f"{kind}/"):
        raise invalid(place, f"{place}: the data URL holds {shown(mime)}, not {'an image' if kind == 'image' else 'a video'}",
                      f"invalid_{kind}")
    payload = "".join(payload.split())
    if len(payload) // 4 * 3 > max_bytes + 2:
        raise invalid(place, f"{place}: the {kind} is over the limit of {max_bytes:,} bytes", f"{kind}_too_large")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(place, f"{place}: the data URL's payload is not valid base64", "invalid_base64") from None
    if len(data) > max_bytes:
        raise invalid(place, f"{place}: the {kind} is over the limit of {max_bytes:,} bytes", f"{kind}_too_large")
    return data


def local_file(place: str, path: str, rules: ImageRules, kind: str = "image") -> bytes:
    if rules.root is None:
        raise invalid(place, f"{place}: this server reads no local files; send the {kind} as a data: URL (or "
                      "start the server with --image-root DIR)", f"local_{kind}s_disabled")
    try:
        resolved = (rules.root / path).resolve()  # an absolute path replaces the root; both are checked below
    except (OSError, RuntimeError, ValueError):
        raise invalid(place, f"{place}: not a usable path", f"invalid_{kind}") from None
    if not resolved.is_relative_to(rules.root):
        raise invalid(place, f"{place}: the path is outside the server's image root", "path_outside_root")
    try:
        size = os.stat(resolved).st_size
        if not resolved.is_file():
            raise FileNotFoundError
    except (OSError, ValueError):
        raise invalid(place, f"{place}: no such {kind} file under the server's image root",
                      f"{kind}_not_found") from None
    if size > rules.max_bytes:
        raise invalid(place, f"{place}: the {kind} is over the limit of {rules.max_bytes:,} bytes",
                      f"{kind}_too_large")
    return resolved.read_bytes()


def fetch(place: str, url: str, rules: ImageRules, kind: str = "image") -> bytes:
    import httpx

    data = bytearray()
    try:
        with httpx.stream("GET", url, timeout=rules.remote_timeout, follow_redirects=True) as response:
            if response.status_code != 200:
                raise invalid(place, f"{place}: fetching the {kind} gave HTTP {response.status_code}",
                              f"{kind}_fetch_failed")
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > rules.max_bytes:
                    raise invalid(place, f"{place}: the {kind} is over the limit of {rules.max_bytes:,} bytes",
                                  f"{kind}_too_large")
    except httpx.HTTPError as error:
        raise invalid(place, f"{place}: the {kind} could not be fetched ({error})", f"{kind}_fetch_failed") from None
    return bytes(data)


# ---- answers -----------------------------------------------------------------------------------------------
def usage(completion: Completion) -> dict:
    return {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.total_tokens}


def completion_object(call: ChatCall, model: str, completion: Completion) -> dict:
    return {
        "id": call.id, "object": "chat.completion", "created": call.created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text},
                     "finish_reason": completion.finish_reason, "logprobs": None}],
        "usage": usage(completion),
    }


def chunk_event(call: ChatCall, model: str, delta: dict, finish_reason: str | None = None,
                with_usage: Completion | None = None) -> str:
    """One server-sent event of the stream; ``with_usage`` makes the closing usage chunk (no choices)."""
    chunk = {"id": call.id, "object": "chat.completion.chunk", "created": call.created, "model": model,
             "choices": [] if with_usage else [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                                "logprobs": None}]}
    if call.include_usage:
        chunk["usage"] = usage(with_usage) if with_usage else None
    return f"data: {json.dumps(chunk)}\n\n"


DONE_EVENT = "data: [DONE]\n\n"
