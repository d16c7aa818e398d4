"""The chat page at ``GET /`` of the server (docs/serve.md, "Web page"), in a real headless Chromium driven by
playwright against a real uvicorn on 127.0.0.1 with an API key: the page and its files need no key, a missing key
is shown as the server's error, an image sent by the file picker or dropped on the page is shown as a thumbnail,
the answer streams in delta by delta and is the one the API gives for the same conversation, a second turn sends
the whole conversation, Reset starts over, and a video goes as a ``video_url`` part."""

import base64
import io
import shutil
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

import deepstack  # noqa: E402
from deepstack.infer.engine import Engine  # noqa: E402
from deepstack.serve import create_app  # noqa: E402
from tests.fixtures import random_image, tiny  # noqa: E402
from tests.test_serve import AUTH, KEY, running  # noqa: E402

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium executable on PATH (Debian: apt-get install "
                                    "chromium); the web page's test needs a real browser")
SAMPLE = Path(deepstack.__file__).parent / "assets" / "sample.png"
MAX_TOKENS = 16
# the texts the newest answer showed, one per MutationObserver callback (each a later task than the last change)
WATCH_ANSWERS = """() => {
  window.answerTexts = [];
  new MutationObserver(() => {
    const answers = document.querySelectorAll(".message.assistant .text");
    if (answers.length) window.answerTexts.push(answers[answers.length - 1].textContent);
  }).observe(document.getElementById("log"), {childList: true, subtree: true, characterData: true});
}"""
# a file dropped on the page, as the browser makes it when one is dragged from the desktop
DROP = """([name, base64]) => {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const files = new DataTransfer();
  files.items.add(new File([bytes], name, {type: "image/png"}));
  document.getElementById("log").dispatchEvent(new DragEvent("drop", {dataTransfer: files, bubbles: true}));
}"""


@pytest.fixture(scope="module")
def server():
    with Engine(*tiny("llm"), max_batch_size=2) as engine:  # default image limits: the sample is 640x480
        with running(create_app(engine, model_name="tiny", api_key=KEY)) as url:
            yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 900, "height": 700})
    yield context.new_page()
    context.close()


def data_url(data: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(data).decode()}"


def api_answer(server: str, messages: list) -> str:
    """The greedy answer of the HTTP API (not streamed) to the conversation the page sends."""
    body = {"messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0}
    response = httpx.post(f"{server}/v1/chat/completions", json=body, headers=AUTH, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def question(text: str, image: bytes | None = None) -> dict:
    if image is None:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                        {"type": "text", "text": text}]}


def ask(page, text: str, answers: int) -> str:
    """Type ``text``, send it, wait until the page shows ``answers`` finished answers; the newest one."""
    page.fill("#prompt", text)
    page.click("#send")
    page.locator(".message.assistant[data-finish]").nth(answers - 1).wait_for(timeout=120_000)
    return page.locator(".message.assistant .text").nth(answers - 1).text_content()


def test_the_page_and_its_files_need_no_key_but_the_api_does(server):
    response = httpx.get(f"{server}/", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "static/chat.js" in response.text
    assert "default-src 'self'" in response.headers["content-security-policy"]  # nothing from elsewhere
    for name, kind in [("chat.js", "javascript"), ("chat.css", "text/css")]:
        response = httpx.get(f"{server}/static/{name}", timeout=10)
        assert response.status_code == 200 and kind in response.headers["content-type"]
    assert httpx.get(f"{server}/static/nothing.js", timeout=10).status_code == 404
    assert httpx.post(f"{server}/v1/chat/completions", json={"messages": []}, timeout=10).status_code == 401


@needs_chromium
def test_a_conversation_about_an_image_in_a_browser(server, page):
    sample = SAMPLE.read_bytes()
    dropped = io.BytesIO()
    random_image(7, (64, 48)).save(dropped, format="PNG")
    dropped = dropped.getvalue()
    first = question("What is printed here?", sample)
    expected_first = api_answer(server, [first])
    assert len(expected_first) > 4  # a long enough answer to arrive in several deltas

    sent = []  # the bodies the page posts to the API
    page.on("request", lambda request: sent.append(request.post_data_json) if request.method == "POST" else None)
    page.goto(server)
    page.wait_for_function("() => document.getElementById('model').textContent === 'tiny'")  # from /health
    page.fill("#max-tokens", str(MAX_TOKENS))
    page.fill("#temperature", "0")
    page.set_input_files("#file", str(SAMPLE))
    page.wait_for_selector("#attachment:not([hidden]) img[src^='data:image/png']")

    # no key yet: the server's OpenAI-style error is shown, and the question is given back to resend
    page.fill("#prompt", "What is printed here?")
    page.click("#send")
    page.wait_for_selector("#error:not([hidden])")
    assert "401: missing or wrong API key" in page.text_content("#error")
    assert page.locator(".message").count() == 0 and page.input_value("#prompt") == "What is printed here?"
    assert page.is_visible("#attachment img")

    page.fill("#api-key", KEY)
    page.evaluate(WATCH_ANSWERS)
    assert ask(page, "What is printed here?", answers=1) == expected_first
    assert sent[-1] == {"messages": [first], "stream": True, "max_tokens": MAX_TOKENS, "temperature": 0}
    assert page.is_hidden("#error") and page.is_hidden("#attachment")
    thumbnail = page.locator(".message.user img.thumbnail")
    assert thumbnail.count() == 1 and thumbnail.get_attribute("src") == data_url(sample)
    assert thumbnail.evaluate("img => img.complete && img.naturalWidth") == 640  # decoded: shown
    assert 0 < thumbnail.bounding_box()["width"] <= 180  # as a thumbnail
    # streamed: the answer grew over several updates, each a part of the final answer, before it was done
    shown = [text for text in page.evaluate("window.answerTexts") if text]
    partial = {text for text in shown if text != expected_first}
    assert len(partial) >= 2, shown
    assert all(expected_first.startswith(text) for text in shown)

    # the second turn: an image dropped on the page, and the whole conversation sent again
    page.evaluate(DROP, ["dropped.png", base64.b64encode(dropped).decode()])
    page.wait_for_selector("#attachment:not([hidden])")
    second = question("And this one?", dropped)
    expected_second = api_answer(server, [first, {"role": "assistant", "content": expected_first}, second])
    assert ask(page, "And this one?", answers=2) == expected_second
    assert sent[-1]["messages"] == [first, {"role": "assistant", "content": expected_first}, second]
    assert page.locator(".message.user img.thumbnail").count() == 2

    # Reset forgets the conversation; the key is kept for the next visit
    page.click("#reset")
    assert page.locator(".message").count() == 0
    assert ask(page, "Describe it", answers=1) == api_answer(server, [question("Describe it")])
    assert sent[-1]["messages"] == [question("Describe it")]
    page.reload()
    assert page.input_value("#api-key") == KEY


@needs_chromium
def test_stop_ends_the_answer_and_keeps_what_was_said(server, page):
    page.goto(server)
    page.fill("#api-key", KEY)
    page.fill("#max-tokens", "1500")  # far more than it takes to press Stop
    page.fill("#prompt", "Tell me a long story")
    page.click("#send")
    answer = page.locator(".message.assistant .text")
    page.wait_for_function("() => document.querySelector('.message.assistant .text').textContent.length >= 3")
    assert page.text_content("#send") == "Stop"
    page.click("#send")
    page.wait_for_selector(".message.assistant[data-finish='stopped']")
    assert page.text_content("#send") == "Send"
    said = answer.text_content()
    assert 3 <= len(said) < 1500
    deadline = time.monotonic() + 30  # the server saw the page hang up and freed the batch slot
    while httpx.get(f"{server}/health", timeout=10).json()["running"]:
        assert time.monotonic() < deadline, "the stopped answer is still being generated"
        time.sleep(0.05)
    sent = []
    page.on("request", lambda request: sent.append(request.post_data_json) if request.method == "POST" else None)
    page.fill("#max-tokens", str(MAX_TOKENS))
    assert ask(page, "Go on", answers=2) == api_answer(server, [
        question("Tell me a long story"), {"role": "assistant", "content": said}, question("Go on")])
    assert sent[-1]["messages"][1] == {"role": "assistant", "content": said}


@needs_chromium
def test_a_video_sent_from_the_page_is_a_video_url_part_and_gets_the_api_answer(server, page, tmp_path):
    from tests.video_clips import grey_frames, write_clip

    clip = write_clip(tmp_path / "clip.mp4", grey_frames(8))
    (tmp_path / "notes.txt").write_text("not a picture")
    page.goto(server)
    page.fill("#api-key", KEY)
    page.fill("#max-tokens", str(MAX_TOKENS))
    page.fill("#temperature", "0")
    page.set_input_files("#file", str(tmp_path / "notes.txt"))
    page.wait_for_selector("#error:not([hidden])")
    assert "notes.txt is not an image or a video" in page.text_content("#error")
    sent = []
    page.on("request", lambda request: sent.append(request.post_data_json) if request.method == "POST" else None)
    page.set_input_files("#file", str(clip))
    page.wait_for_selector("#attachment:not([hidden]) #preview-video[src^='data:video/mp4']")
    assert page.is_hidden("#preview-image")
    url = f"data:video/mp4;base64,{base64.b64encode(clip.read_bytes()).decode()}"
    asked = {"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                         {"type": "text", "text": "What happens?"}]}
    assert ask(page, "What happens?", answers=1) == api_answer(server, [asked])
    assert sent[-1]["messages"] == [asked]
    assert page.locator(".message.user video.thumbnail").get_attribute("src") == url
    assert page.is_hidden("#attachment") and page.is_hidden("#error")
