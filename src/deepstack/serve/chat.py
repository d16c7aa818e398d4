"""``deepstack chat``: talk to a model in the terminal, over the same engine the server uses (docs/serve.md).

The answer is printed as it is generated; Ctrl-C stops it (what was said so far stays in the conversation).
Commands: ``/image PATH`` attaches an image to your next message, ``/video PATH`` a video (the model sees its frame
mosaic, docs/video.md), ``/reset`` starts over, ``/save FILE`` writes the conversation as JSON (images and videos
by path), ``/quit`` (or Ctrl-D) leaves.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import TextIO

from ..infer.engine import Engine, Request, RequestError, Video, decode_image

PROMPT = "you> "
HELP = "commands: /image PATH, /video PATH, /reset, /save FILE, /quit; Ctrl-C stops an answer"


class Conversation:
    """The turns so far, as engine messages; each image or video part also keeps its path (for ``/save``)."""

    def __init__(self, system: str | None = None):
        self.system = system
        self.messages: list[dict] = []
        self.attached: list[dict] = []  # image and video parts waiting for the next user message

    def reset(self) -> None:
        self.messages, self.attached = [], []

    def attach(self, path: str, max_pixels: int, kind: str = "image") -> dict:
        """Attach the image (or ``kind="video"``, the video) at ``path`` to the next message; a file that cannot
        be used is refused now, not in the middle of a turn. Returns the size of the image the model sees."""
        data = Path(path).expanduser().read_bytes()
        image = Video(data).mosaic(max_pixels) if kind == "video" else decode_image(data, max_pixels)
        self.attached.append({"type": kind, kind: data, "path": str(Path(path).expanduser().resolve())})
        return {"size": image.size}

    def request(self, text: str, **settings) -> Request:
        """The request for a new user message (not yet added: a refused request changes nothing)."""
        turn = {"role": "user", "content": [*self.attached, {"type": "text", "text": text}]}
        system = [{"role": "system", "content": self.system}] if self.system else []
        return Request(system + self.messages + [turn], **settings)

    def add(self, request: Request, answer: str) -> None:
        self.messages = request.messages[1 if self.system else 0 :] + [{"role": "assistant", "content": answer}]
        self.attached = []

    def save(self, path: str) -> None:
        def plain(part: dict) -> dict:
            return {"type": part["type"], "path": part["path"]} if part["type"] in ("image", "video") else part

        turns = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str)
                  else [plain(part) for part in m["content"]]} for m in self.messages]
        system = [{"role": "system", "content": self.system}] if self.system else []
        Path(path).write_text(json.dumps({"messages": system + turns}, indent=2, ensure_ascii=False) + "\n")


def run_chat(engine: Engine, system: str | None = None, max_tokens: int = 512, temperature: float = 0.0,
             input_stream: TextIO | None = None, output: TextIO | None = None) -> None:
    """The chat loop over a running engine, reading ``input_stream`` (stdin) and writing ``output`` (stdout)."""
    input_stream, output = input_stream or sys.stdin, output or sys.stdout
    conversation = Conversation(system)

    def say(text: str) -> None:
        output.write(text + "\n")
        output.flush()

    say(f"chatting with a DeepStack model; {HELP}")
    while True:
        output.write(PROMPT)
        output.flush()
        try:
            line = input_stream.readline()
        except KeyboardInterrupt:
            say("\n(/quit or Ctrl-D to leave)")
            continue
        if not line:  # end of input (Ctrl-D)
            say("")
            return
        line = line.strip()
        command, _, argument = line.partition(" ")
        if not line:
            continue
        if command == "/quit":
            return
        if command == "/reset":
            conversation.reset()
            say("(conversation cleared)")
        elif command in ("/image", "/video"):
            kind = command[1:]
            try:
                size = conversation.attach(argument.strip(), engine.max_image_pixels, kind)["size"]
                shown_as = f"{size[0]}x{size[1]}" if kind == "image" else f"its frame mosaic, {size[0]}x{size[1]}"
                say(f"(attached {argument.strip()}, {shown_as}; it goes with your next message)")
            except (OSError, ValueError, ImportError) as error:
                say(f"(cannot use that {kind}: {error})")
        elif command == "/save":
            try:
                conversation.save(argument.strip())
                say(f"(saved {len(conversation.messages)} messages to {argument.strip()})")
            except OSError as error:
                say(f"(cannot save: {error})")
        elif command.startswith("/"):
            say(f"(unknown command {command}; {HELP})")
        else:
            answer_turn(engine, conversation, line, output, max_tokens=max_tokens, temperature=temperature)


def answer_turn(engine: Engine, conversation: Conversation, text: str, output: TextIO, **settings) -> None:
    """Send one user message and print the answer as it comes; Ctrl-C stops it."""
    stream = None
    try:
        request = conversation.request(text, **settings)
        stream = engine.submit(request)
        for delta in stream:
            output.write(delta)
            output.flush()
    except RequestError as error:
        output.write(f"(not sent: {error})\n")
        return
    except KeyboardInterrupt:
        if stream is None:
            output.write("(not sent)\n")
            return
        stream.cancel()
        output.write(" [stopped]")
    completion = stream.result(timeout=60)
    output.write("\n")
    output.flush()
    conversation.add(request, completion.text)


def chat(model_dir: str | Path, device: str = "auto", dtype: str = "auto", system: str | None = None,
         max_tokens: int = 512, temperature: float = 0.0) -> None:
    """Load the model in ``model_dir`` and chat with it in this terminal."""
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C stops the answer being written: Python leaves SIGINT ignored when the parent process ignored it
        # (a launcher, a job control shell), and then Ctrl-C would do nothing
        signal.signal(signal.SIGINT, signal.default_int_handler)
    with Engine.from_pretrained(model_dir, device, dtype, max_batch_size=1, batch_wait_ms=0) as engine:
        run_chat(engine, system, max_tokens, temperature)


__all__ = ["Conversation", "chat", "run_chat"]
