"""The OpenAI-compatible server, on a real uvicorn on 127.0.0.1: answers plain and streamed, the openai client
package works against it, every bad input gets a 4xx naming the field and leaves the server answering, the key
is checked, a full queue answers 503, and a client that hangs up frees its place in the batch."""

import base64
import io
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from PIL import Image  # noqa: E402

from deepstack.infer.engine import Engine, Request  # noqa: E402
from deepstack.serve import create_app  # noqa: E402
from tests.fixtures import random_image, tiny  # noqa: E402

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@contextmanager
def running(app):
    """``app`` on a real uvicorn on a free loopback port, in a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def png(seed: int = 0, size=(48, 40)) -> bytes:
    buffer = io.BytesIO()
    random_image(seed, size).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def video_part(url: str) -> dict:
    return {"type": "video_url", "video_url": {"url": url}}


def chat(*parts, max_tokens: int = 6, **fields) -> dict:
    content = [{"type": "text", "text": p} if isinstance(p, str) else p for p in parts]
    return {"model": "deepstack", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, **fields}


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    (root / "cat.png").write_bytes(png(3))
    (root.parent / "secret.png").write_bytes(png(4))
    return root


@pytest.fixture(scope="module")
def engine():
    limits = {"max_image_pixels": 100_000, "default_max_tokens": 16}
    with Engine(*tiny("llm"), max_batch_size=8, batch_wait_ms=20, **limits) as engine:
        yield engine


@pytest.fixture(scope="module")
def server(engine, images_dir):
    app = create_app(engine, model_name="tiny", api_key=KEY, image_root=images_dir, max_images=3,
                     max_image_bytes=300_000, max_body_bytes=1_000_000)
    with running(app) as url:
        yield url


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server, headers=AUTH, timeout=60) as client:
        yield client


def stream_events(client, body) -> list:
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[len("data: ") :]) for line in lines[:-1]]


# ---- answers ---------------------------------------------------------------------------------------------
def test_a_video_part_gets_the_engines_answer_for_that_video(client, engine, tmp_path):
    """vLLM's ``video_url`` part: the video's bytes go to the engine, which shows the model its frame mosaic
    (docs/video.md); the answer and the prompt's token count are the engine's for that video."""
    from tests.video_clips import grey_frames, write_clip

    clip = write_clip(tmp_path / "clip.mp4", grey_frames(8)).read_bytes()
    response = client.post("/v1/chat/completions",
                           json=chat(video_part(data_url(clip, "video/mp4")), "what happens?"))
    assert response.status_code == 200, response.text
    expected = engine.generate(Request([{"role": "user", "content": [
        {"type": "video", "video": clip}, {"type": "text", "text": "what happens?"}]}], max_tokens=6), timeout=60)
    body = response.json()
    assert body["choices"][0]["message"]["content"] == expected.text
    assert body["usage"]["prompt_tokens"] == expected.prompt_tokens


def test_a_chat_completion_answers_like_the_engine(client, engine):
    response = client.post("/v1/chat/completions", json=chat(image_part(data_url(png(1))), "what is this?"))
    assert response.status_code == 200
    body = response.json()
    expected = engine.generate(Request([{"role": "user", "content": [
        {"type": "image", "image": png(1)}, {"type": "text", "text": "what is this?"}]}], max_tokens=6), timeout=60)
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": expected.text}
    assert choice["finish_reason"] == expected.finish_reason == "length"
    assert body["usage"] == {"prompt_tokens": expected.prompt_tokens, "completion_tokens": 6,
                             "total_tokens": expected.prompt_tokens + 6}


def test_an_hd_model_answers_an_image_with_its_own_token_count_in_usage(engine):
    """DeepStack-HD: a 48x40 image takes 16 + 6 * (8 + 1) = 70 tokens (worked by hand in test_hd.py), 54 more
    than the plain model's 16 for the same prompt; the answer is the HD engine's own."""
    from tests.fixtures import PINPOINTS

    body = chat(image_part(data_url(png(1))), "what is this?", max_tokens=3)
    with Engine(*tiny("llm", image_grid_pinpoints=PINPOINTS), batch_wait_ms=0) as hd, \
            running(create_app(hd, model_name="tiny-hd")) as url:
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
        expected = hd.generate(Request([{"role": "user", "content": [
            {"type": "image", "image": png(1)}, {"type": "text", "text": "what is this?"}]}], max_tokens=3), timeout=60)
    plain = engine.generate(Request([{"role": "user", "content": [
        {"type": "image", "image": png(1)}, {"type": "text", "text": "what is this?"}]}], max_tokens=1), timeout=60)
    assert response.status_code == 200
    answer = response.json()
    assert answer["choices"][0]["message"]["content"] == expected.text
    assert answer["usage"]["prompt_tokens"] == expected.prompt_tokens == plain.prompt_tokens + 70 - 16


def test_a_streamed_answer_is_openai_chunks_that_add_up_to_the_plain_answer(client):
    body = chat(image_part(data_url(png(2))), "describe it", max_tokens=10)
    plain = client.post("/v1/chat/completions", json=body).json()
    chunks = stream_events(client, {**body, "stream_options": {"include_usage": True}})
    assert all(chunk["object"] == "chat.completion.chunk" and chunk["id"] == chunks[0]["id"] for chunk in chunks)
    with_choices = [chunk for chunk in chunks if chunk["choices"]]
    assert with_choices[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in with_choices)
    assert text == plain["choices"][0]["message"]["content"]
    assert with_choices[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]


def test_images_from_the_image_root_by_path_and_file_url(client, images_dir):
    inline = client.post("/v1/chat/completions", json=chat(image_part(data_url(png(3))), "q")).json()
    by_path = client.post("/v1/chat/completions", json=chat(image_part("cat.png"), "q")).json()
    by_url = client.post("/v1/chat/completions", json=chat(image_part((images_dir / "cat.png").as_uri()), "q")).json()
    assert inline["choices"] == by_path["choices"] == by_url["choices"]


def test_the_openai_client_package_works_against_the_server(server, client):
    from openai import OpenAI

    openai = OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)
    assert [model.id for model in openai.models.list()] == ["tiny"]
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "what is in the picture?"},
                                             image_part(data_url(png(5)))]}]
    answer = openai.chat.completions.create(model="tiny", messages=messages, max_tokens=7, temperature=0)
    expected = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 7}).json()
    assert answer.choices[0].message.content == expected["choices"][0]["message"]["content"]
    assert answer.usage.completion_tokens == 7
    streamed = openai.chat.completions.create(model="tiny", messages=messages, max_tokens=7, temperature=0,
                                              stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    assert text == answer.choices[0].message.content


def test_health_and_models(server, client):
    assert httpx.get(f"{server}/health", timeout=10).json()["status"] == "ok"  # no key needed
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"


# ---- refusals --------------------------------------------------------------------------------------------
def truncated_png() -> bytes:
    return png(0)[:150]


def flat_png(size) -> bytes:
    """A one-colour image: many pixels in few bytes."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


BAD_REQUESTS = [
    # (what, body, status, param, code)
    ("not JSON", b"{\"messages\": [", 400, None, "invalid_json"),
    ("not an object", b"[1, 2]", 400, None, "invalid_type"),
    ("no messages", {"model": "tiny"}, 400, "messages", "invalid_type"),
    ("messages not a list", {"messages": "hi"}, 400, "messages", "invalid_type"),
    ("a message not an object", {"messages": ["hi"]}, 400, "messages[0]", "invalid_type"),
    ("an unknown role", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role", "invalid_value"),
    ("a tool message", {"messages": [{"role": "tool", "content": "1"}]}, 400, "messages[0].role", "invalid_value"),
    ("content a number", {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content", "invalid_type"),
    ("an unknown part", chat({"type": "input_audio"}), 400, "messages[0].content[0].type", "unsupported_value"),
    ("text not a string", chat({"type": "text", "text": 5}), 400, "messages[0].content[0].text", "invalid_type"),
    ("temperature a string", chat("hi", temperature="hot"), 400, "temperature", "invalid_type"),
    ("temperature too high", chat("hi", temperature=9), 400, "temperature", "invalid_value"),
    ("top_p zero", chat("hi", top_p=0), 400, "top_p", "invalid_value"),
    ("max_tokens negative", chat("hi", max_tokens=-1), 400, "max_tokens", "invalid_value"),
    ("max_tokens a float", chat("hi", max_tokens=2.5), 400, "max_tokens", "invalid_type"),
    ("max_tokens past the context", chat("hi", max_tokens=5000), 400, "max_tokens", "context_length_exceeded"),
    ("max_completion_tokens past the context", {**chat("hi"), "max_tokens": None, "max_completion_tokens": 5000},
     400, "max_completion_tokens", "context_length_exceeded"),
    ("a prompt past the context", chat("x" * 3000), 400, "messages", "context_length_exceeded"),
    ("stop not strings", chat("hi", stop=[1]), 400, "stop", "invalid_value"),
    ("seed a string", chat("hi", seed="1"), 400, "seed", "invalid_type"),
    ("stream not a bool", chat("hi", stream="yes"), 400, "stream", "invalid_type"),
    ("n of 2", chat("hi", n=2), 400, "n", "unsupported_value"),
    ("the image placeholder as text", chat("look: <image>"), 400, "messages[0].content", "invalid_value"),
    ("bad base64", chat(image_part("data:image/png;base64,@@@notbase64@@@")), 400,
     "messages[0].content[0].image_url.url", "invalid_base64"),
    ("a data URL of text", chat(image_part("data:text/plain;base64,aGVsbG8=")), 400,
     "messages[0].content[0].image_url.url", "invalid_image"),
    ("not an image", chat(image_part(data_url(b"hello, not a picture"))), 400, "messages[0].content[0]",
     "invalid_image"),
    ("a truncated image", chat(image_part(data_url(truncated_png()))), 400, "messages[0].content[0]", "invalid_image"),
    ("too many pixels", chat(image_part(data_url(flat_png((400, 400))))), 400, "messages[0].content[0]",
     "invalid_image"),
    ("too many bytes", chat(image_part(data_url(b"\x89PNG" + bytes(400_000)))), 400,
     "messages[0].content[0].image_url.url", "image_too_large"),
    ("too many images", chat(*[image_part(data_url(png(i))) for i in range(4)]), 400, "messages", "too_many_images"),
    ("an image in an assistant turn", {"messages": [{"role": "assistant", "content": [
        image_part(data_url(png(0)))]}]}, 400, "messages[0].content[0]", "invalid_value"),
    ("an image as a video", chat(video_part(data_url(png(0)))), 400, "messages[0].content[0].video_url.url",
     "invalid_video"),
    ("not a video", chat(video_part(data_url(b"\x00not a video" * 20, "video/mp4"))), 400, "messages[0].content[0]",
     "invalid_video"),
    ("a video in an assistant turn", {"messages": [{"role": "assistant", "content": [
        video_part(data_url(b"\x00", "video/mp4"))]}]}, 400, "messages[0].content[0]", "invalid_value"),
    ("a missing video file", chat(video_part("clip.mp4")), 400, "messages[0].content[0].video_url.url",
     "video_not_found"),
    ("a path out of the image root", chat(image_part("../secret.png")), 400, "messages[0].content[0].image_url.url",
     "path_outside_root"),
    ("an absolute path", chat(image_part("/etc/passwd")), 400, "messages[0].content[0].image_url.url",
     "path_outside_root"),
    ("a missing file", chat(image_part("file:///nowhere/at/all.png")), 400, "messages[0].content[0].image_url.url",
     "path_outside_root"),
    ("a missing file in the root", chat(image_part("dog.png")), 400, "messages[0].content[0].image_url.url",
     "image_not_found"),
    ("a remote URL", chat(image_part("http://127.0.0.1:1/cat.png")), 400, "messages[0].content[0].image_url.url",
     "remote_images_disabled"),
    ("a body over the cap", chat("hi", padding="x" * 1_100_000), 413, None, "request_too_large"),
]


@pytest.mark.parametrize(("what", "body", "status", "param", "code"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_a_bad_request_gets_a_4xx_naming_the_field(client, what, body, status, param, code):
    if isinstance(body, bytes):
        response = client.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    else:
        response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"]) == (param, code), error["message"]
    assert error["message"] and error["type"] == "invalid_request_error"


def test_the_api_key_is_required(server):
    body = chat("hi", max_tokens=1)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        response = httpx.post(f"{server}/v1/chat/completions", json=body, headers=headers, timeout=10)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server}/v1/models", timeout=10).status_code == 401


def malformed(rng: random.Random) -> bytes | dict:
    """A broken request: random bytes, cut JSON, or a valid request with one field set to a wrong value."""
    values = [None, True, -1, 0, 3, 10**30, 2**64, 1.5, float("inf"), "", "x", "<image>", [], [1], {}, {"a": 1},
              [[[[]]]], "data:image/png;base64,", "../../etc/passwd", "\x00", "é" * 50]
    base = chat(image_part(data_url(png(1))), "question", max_tokens=2)
    kind = rng.randrange(5)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    if kind == 1:
        text = json.dumps(base)
        return text[: rng.randrange(len(text))].encode()
    if kind == 2:
        return {**base, rng.choice(["model", "messages", "max_tokens", "temperature", "top_p", "stop", "seed",
                                    "stream", "n", "stream_options", "max_completion_tokens"]): rng.choice(values)}
    message = dict(base["messages"][0])
    if kind == 3:
        message[rng.choice(["role", "content"])] = rng.choice(values)
    else:
        part = dict(message["content"][rng.randrange(2)])
        part[rng.choice(["type", "text", "image_url"])] = rng.choice(values + [{"url": rng.choice(values)}])
        message["content"] = [part]
    return {**base, "messages": [message]}


def test_hundreds_of_malformed_requests_leave_the_server_answering(client, engine):
    rng = random.Random(0)
    started = time.monotonic()
    statuses = []
    for _ in range(300):
        body = malformed(rng)
        if isinstance(body, bytes):
            response = client.post("/v1/chat/completions", content=body, timeout=20)
        else:
            response = client.post("/v1/chat/completions", content=json.dumps(body).encode(), timeout=20)
        statuses.append(response.status_code)
        assert response.status_code < 500, (body if not isinstance(body, bytes) else body[:100], response.text)
        if response.status_code != 200:
            assert response.json()["error"]["message"]
    assert statuses.count(400) > 200  # most were refused, not answered
    assert time.monotonic() - started < 120
    good = client.post("/v1/chat/completions", json=chat(image_part(data_url(png(1))), "still there?"))
    assert good.status_code == 200 and good.json()["choices"][0]["finish_reason"] == "length"
    assert engine.waiting == 0


# ---- load --------------------------------------------------------------------------------------------------
def test_eight_concurrent_clients_get_the_answers_they_get_one_at_a_time(server, client, engine):
    bodies = [[chat(*([image_part(data_url(png(c)))] if c % 2 else []), f"client {c} asks question {r}" + "!" * c,
                    max_tokens=3 + c) for r in range(2)] for c in range(8)]
    sequential = [[client.post("/v1/chat/completions", json=body).json()["choices"][0] for body in per_client]
                  for per_client in bodies]
    concurrent = [[None, None] for _ in bodies]
    engine.largest_batch = 0

    def run(index):
        with httpx.Client(base_url=server, headers=AUTH, timeout=60) as own:
            for turn, body in enumerate(bodies[index]):
                concurrent[index][turn] = own.post("/v1/chat/completions", json=body).json()["choices"][0]

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert concurrent == sequential
    assert engine.largest_batch > 1  # they were decoded together


def test_a_client_that_hangs_up_mid_stream_frees_its_batch_slot(server, client, engine):
    steps = []
    hook = engine.model.language_model.register_forward_hook(lambda *_: steps.append(1))
    try:
        with httpx.Client(base_url=server, headers=AUTH, timeout=60) as leaving:
            with leaving.stream("POST", "/v1/chat/completions", json=chat("go on", max_tokens=2000, stream=True)) as r:
                lines = r.iter_lines()
                while not next(lines).startswith("data: {"):
                    pass
        deadline = time.monotonic() + 20
        while engine.active and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.active == 0
        assert len(steps) < 1000, "the engine kept generating for a client that was gone"
    finally:
        hook.remove()
    assert client.post("/v1/chat/completions", json=chat("next", max_tokens=2)).status_code == 200


def test_a_full_queue_answers_503_with_retry_after():
    with Engine(*tiny("llm"), max_batch_size=1, max_queue=1, batch_wait_ms=0) as engine, \
            running(create_app(engine)) as url, httpx.Client(base_url=url, timeout=60) as client:
        with client.stream("POST", "/v1/chat/completions", json=chat("long", max_tokens=2000, stream=True)) as long:
            lines = long.iter_lines()
            while not next(lines).startswith("data: {"):
                pass  # the engine is decoding the long answer; its one batch slot is taken
            waiting = threading.Thread(target=lambda: client.post("/v1/chat/completions", json=chat("waits")))
            waiting.start()
            deadline = time.monotonic() + 20
            while engine.waiting < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            refused = httpx.post(f"{url}/v1/chat/completions", json=chat("one too many"), timeout=20)
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
            assert refused.json()["error"]["code"] == "overloaded"
        waiting.join(timeout=60)  # hanging up on the long answer let the waiting one through
        assert not waiting.is_alive() and engine.waiting == 0


def test_serve_loads_a_saved_model_and_answers_on_loopback(tmp_path):
    model, processor = tiny("llm")
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = (f"from deepstack.serve import serve; serve({str(tmp_path / 'model')!r}, port={port}, api_key='k', "
            "max_batch_size=2, log_level='warning')")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read().decode()
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=chat("hi", max_tokens=3),
                              headers={"Authorization": "Bearer k"}, timeout=60)
        assert response.status_code == 200 and response.json()["model"] == "model"
        assert response.json()["usage"]["completion_tokens"] == 3
    finally:
        process.terminate()
        process.wait(timeout=30)


# ---- the terminal chat -----------------------------------------------------------------------------------
class Terminal:
    """A program on a pseudo-terminal: what it prints, read up to a marker; keys typed into it."""

    def __init__(self, code: str):
        import pty

        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: become the program
            os.execv(sys.executable, [sys.executable, "-c", code])
        self.seen = ""

    def read_until(self, marker: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while marker not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"no {marker!r} in:\n{self.seen}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    self.seen += os.read(self.fd, 4096).decode(errors="replace")
                except OSError:  # the program ended
                    assert marker in self.seen, f"no {marker!r} in:\n{self.seen}"
        before, _, self.seen = self.seen.partition(marker)
        return before

    def read_some(self, timeout: float = 120) -> str:
        """Wait for output beyond what was read so far."""
        if not self.seen and select.select([self.fd], [], [], timeout)[0]:
            self.seen += os.read(self.fd, 4096).decode(errors="replace")
        assert self.seen, "no output"
        text, self.seen = self.seen, ""
        return text

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def close(self) -> int:
        for _ in range(100):
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.1)
        os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)
        os.close(self.fd)
        return -9


def test_chat_prints_the_answer_keeps_the_conversation_and_saves_it(tmp_path, engine):
    from deepstack.serve.chat import run_chat

    (tmp_path / "cat.png").write_bytes(png(3))
    typed = f"/image {tmp_path / 'cat.png'}\nwhat is this?\nand now?\n/save {tmp_path / 'chat.json'}\n/reset\n/nope\n"
    output = io.StringIO()
    run_chat(engine, max_tokens=5, input_stream=io.StringIO(typed), output=output)  # ends at the end of input
    first = engine.generate(Request([{"role": "user", "content": [
        {"type": "image", "image": png(3)}, {"type": "text", "text": "what is this?"}]}], max_tokens=5), timeout=60)
    shown = output.getvalue()
    assert f"you> {first.text}\n" in shown and "(attached" in shown and "(saved 4 messages" in shown
    assert "(conversation cleared)" in shown and "(unknown command /nope" in shown
    saved = json.loads((tmp_path / "chat.json").read_text())["messages"]
    assert [m["role"] for m in saved] == ["user", "assistant", "user", "assistant"]
    assert saved[0]["content"][0] == {"type": "image", "path": str(tmp_path / "cat.png")}
    assert saved[1]["content"] == first.text


def test_chat_attaches_a_video_and_refuses_a_file_that_is_not_one(tmp_path, engine):
    from deepstack.serve.chat import run_chat
    from tests.video_clips import grey_frames, write_clip

    clip = write_clip(tmp_path / "clip.mp4", grey_frames(8))
    (tmp_path / "notes.mp4").write_bytes(b"\x00 not a video" * 20)
    typed = f"/video {tmp_path / 'notes.mp4'}\n/video {clip}\nwhat happens?\n/save {tmp_path / 'chat.json'}\n"
    output = io.StringIO()
    run_chat(engine, max_tokens=5, input_stream=io.StringIO(typed), output=output)
    expected = engine.generate(Request([{"role": "user", "content": [
        {"type": "video", "video": clip.read_bytes()}, {"type": "text", "text": "what happens?"}]}], max_tokens=5),
        timeout=60)
    shown = output.getvalue()
    assert "(cannot use that video: " in shown and "not a video file" in shown
    assert "its frame mosaic" in shown and f"you> {expected.text}\n" in shown
    saved = json.loads((tmp_path / "chat.json").read_text())["messages"]
    assert saved[0]["content"] == [{"type": "video", "path": str(clip)}, {"type": "text", "text": "what happens?"}]


def test_terminal_chat_streams_and_stops_on_ctrl_c(tmp_path):
    model, processor = tiny("llm")
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    (tmp_path / "cat.png").write_bytes(png(3))
    code = f"from deepstack.serve.chat import chat; chat({str(tmp_path / 'model')!r}, max_tokens=2000)"
    # started with SIGINT ignored, as a launcher may leave it (the child inherits it): Ctrl-C must still stop it
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        terminal = Terminal(code)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        terminal.read_until("you> ")
        terminal.type(f"/image {tmp_path / 'cat.png'}\n")
        assert "(attached" in terminal.read_until("you> ")
        terminal.type("what is this?\n")
        terminal.read_until("what is this?\r\n")  # the echo of what was typed
        terminal.read_some()  # the answer is streaming
        terminal.type("\x03")  # Ctrl-C
        assert "[stopped]" in terminal.read_until("you> ", timeout=60)
        terminal.type(f"/save {tmp_path / 'chat.json'}\n")
        assert "saved 2 messages" in terminal.read_until("you> ")
        partial = json.loads((tmp_path / "chat.json").read_text())["messages"][1]["content"]
        assert 0 < len(partial) < 2000  # what was said before Ctrl-C stays in the conversation
        terminal.type("/quit\n")
    finally:
        status = terminal.close()
    assert status == 0
