"""The inference engine: requests served together in one batch get the answers they get alone (greedy), the
stream of text deltas adds up to the answer, stop strings end it, a seed fixes a sampled answer, and an image
is encoded once for all the turns of a conversation."""

import io
import threading

import pytest
import torch

from deepstack.infer.engine import Engine, EngineBusy, Request, RequestError, image_key
from deepstack.model.modeling import feature_rows
from tests.fixtures import PINPOINTS, random_image, sharpened, tiny


@pytest.fixture(scope="module")
def parts():
    return tiny("llm")


@pytest.fixture(scope="module")
def engine(parts):
    with Engine(*parts, max_batch_size=4, batch_wait_ms=500) as engine:
        yield engine


@pytest.fixture(scope="module")
def alone(parts):
    """The same model serving one request at a time."""
    with Engine(*parts, max_batch_size=1, batch_wait_ms=0) as engine:
        yield engine


def png(seed: int, size=(48, 40)) -> bytes:
    buffer = io.BytesIO()
    random_image(seed, size).save(buffer, format="PNG")
    return buffer.getvalue()


def user(*parts) -> list[dict]:
    content = [{"type": "text", "text": p} if isinstance(p, str) else {"type": "image", "image": p} for p in parts]
    return [{"role": "user", "content": content}]


def requests_of_different_lengths() -> list[Request]:
    return [
        Request(user(png(0), "short"), max_tokens=6),
        Request(user("a much longer question before the image, then", png(1, (30, 64)), "and after it"), max_tokens=9),
        Request(user("no image at all"), max_tokens=4),
        Request(user(png(2), png(0), "two images"), max_tokens=7),
    ]


def test_greedy_answers_in_a_batch_equal_each_request_served_alone(engine, alone):
    requests = requests_of_different_lengths()
    streams = [engine.submit(request) for request in requests]  # within batch_wait_ms: one batch of 4
    together = [stream.result(timeout=120) for stream in streams]
    assert engine.largest_batch == 4
    for request, stream, answer in zip(requests, streams, together):
        single = alone.submit(request)
        assert single.result(timeout=120) == answer
        assert single.token_ids == stream.token_ids
        assert answer.completion_tokens == len(stream.token_ids) and answer.finish_reason in ("stop", "length")


def test_engine_answer_is_model_generate_greedy(parts, alone):
    model, processor = parts
    image = random_image(4)
    inputs = processor(images=[image], text="<image>\nwhat is it?", use_chat_template=True)
    expected = model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    stream = alone.submit(Request(user(image, "what is it?"), max_tokens=8))
    stream.result(timeout=60)
    assert stream.token_ids == expected.tolist()
    assert stream.prompt_tokens == inputs["input_ids"].shape[1]


def test_a_request_arriving_during_a_batch_joins_it_and_gets_its_alone_answer(parts, alone):
    with Engine(*parts, max_batch_size=4, batch_wait_ms=0) as engine:
        long = engine.submit(Request(user("go"), max_tokens=60))
        next(iter(long))  # the long request is being decoded
        late = [  # one shorter than the running rows, one longer: each side gets padded
            Request(user("late"), max_tokens=5),
            Request(user("later still, and with an image", png(6), "that makes it longer"), max_tokens=8),
        ]
        late_streams = [engine.submit(request) for request in late]
        late_answers = [stream.result(timeout=60) for stream in late_streams]
        assert not long.done, "the late requests finished while the long one was still going"
        long_answer = long.result(timeout=60)
        assert engine.joined >= 1
    for request, stream, answer in zip(late, late_streams, late_answers):
        single = alone.submit(request)
        assert single.result(timeout=60) == answer and single.token_ids == stream.token_ids
    assert alone.generate(Request(user("go"), max_tokens=60), timeout=60) == long_answer


def test_streamed_deltas_add_up_to_the_final_text(engine):
    stream = engine.submit(Request(user(png(3), "tell me"), max_tokens=20))
    deltas = list(stream)
    answer = stream.result()
    assert len(deltas) > 1 and all(deltas)
    assert "".join(deltas) == answer.text
    assert answer.finish_reason == "length" and answer.completion_tokens == 20


def test_a_stop_string_ends_the_answer_before_it(alone):
    question = user(png(3), "tell me")
    full = alone.generate(Request(question, max_tokens=20), timeout=60).text
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    stream = alone.submit(Request(question, max_tokens=20, stop=["never produced", stop]))
    deltas = list(stream)
    answer = stream.result()
    assert answer.text == full[: full.find(stop)] == "".join(deltas)
    assert answer.finish_reason == "stop" and answer.completion_tokens < 20


def test_a_seed_fixes_a_sampled_answer_in_any_batch(engine, alone):
    def sampled(seed):
        return Request(user(png(1), "imagine"), max_tokens=12, temperature=1.0, top_p=0.9, seed=seed)

    first = alone.generate(sampled(7), timeout=60)
    streams = [engine.submit(request) for request in [sampled(7), *requests_of_different_lengths()[:2], sampled(8)]]
    in_batch, other_seed = streams[0].result(timeout=60), streams[-1].result(timeout=60)
    assert in_batch == first
    assert other_seed.text != first.text


def test_temperature_zero_is_greedy_whatever_the_seed(alone):
    question = user("hello")
    greedy = alone.generate(Request(question, max_tokens=8), timeout=60)
    assert alone.generate(Request(question, max_tokens=8, seed=1, top_p=0.5), timeout=60) == greedy


def test_an_image_is_encoded_once_for_the_turns_of_a_conversation(parts):
    model, processor = parts
    calls = []
    hook = model.vision_tower.register_forward_hook(lambda *_: calls.append(1))
    try:
        with Engine(model, processor, batch_wait_ms=0) as engine:
            image = png(9)
            turn = user(image, "what is this?")
            first = engine.generate(Request(turn, max_tokens=4), timeout=60)
            after_first = len(calls)
            follow_up = turn + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "sure?"}]
            engine.generate(Request(follow_up, max_tokens=4), timeout=60)
            assert after_first > 0 and len(calls) == after_first  # the second turn ran no vision tower
            engine.generate(Request(user(png(10), "and this?"), max_tokens=4), timeout=60)
            assert len(calls) > after_first  # a new image is encoded
    finally:
        hook.remove()


def test_the_image_cache_is_bounded(parts):
    with Engine(*parts, batch_wait_ms=0, image_cache_bytes=1) as engine:
        engine.generate(Request(user(png(9), "q"), max_tokens=1), timeout=60)
        assert len(engine.images) == 0 and engine.images.nbytes == 0


def test_a_cancelled_request_leaves_the_batch(parts):
    with Engine(*parts, batch_wait_ms=0) as engine:
        stream = engine.submit(Request(user("go on and on"), max_tokens=1500))
        next(iter(stream))
        stream.cancel()
        answer = stream.result(timeout=30)
        assert answer.finish_reason == "cancelled" and answer.completion_tokens < 1500
        assert engine.generate(Request(user("next"), max_tokens=2), timeout=30).completion_tokens == 2


def test_a_full_queue_refuses_with_engine_busy(parts):
    with Engine(*parts, max_batch_size=1, max_queue=1, batch_wait_ms=0) as engine:
        running = engine.submit(Request(user("long"), max_tokens=1500))
        next(iter(running))  # taken off the queue by the engine
        waiting = engine.submit(Request(user("waits"), max_tokens=1))
        with pytest.raises(EngineBusy, match="already waiting"):
            engine.submit(Request(user("one too many"), max_tokens=1))
        running.cancel()
        assert waiting.result(timeout=30).completion_tokens == 1


def test_a_model_error_fails_the_requests_of_its_batch_and_the_engine_goes_on(parts):
    model, processor = parts
    broken = {"steps": 0}

    def fail_on_the_third_step(*_):
        broken["steps"] += 1
        if broken["steps"] == 3:
            raise RuntimeError("the device fell over")

    hook = model.language_model.register_forward_pre_hook(fail_on_the_third_step)
    try:
        with Engine(model, processor, batch_wait_ms=0) as engine:
            stream = engine.submit(Request(user("hello"), max_tokens=10))
            with pytest.raises(RuntimeError, match="fell over"):
                stream.result(timeout=30)
            assert engine.generate(Request(user("again"), max_tokens=3), timeout=30).completion_tokens == 3
    finally:
        hook.remove()


@pytest.mark.parametrize(
    ("request_kwargs", "param", "match"),
    [
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", "one of system, user, assistant"),
        ({"messages": []}, "messages", "non-empty"),
        ({"messages": user("hi"), "temperature": -1}, "temperature", "at least 0"),
        ({"messages": user("hi"), "top_p": 0}, "top_p", "above 0"),
        ({"messages": user("hi"), "max_tokens": 0}, "max_tokens", "at least 1"),
        ({"messages": user("hi"), "max_tokens": True}, "max_tokens", "integer"),
        ({"messages": user("hi"), "stop": ["a", ""]}, "stop", "non-empty string"),
        ({"messages": user("hi"), "max_tokens": 5000}, "max_tokens", "2048 positions"),
        ({"messages": user("x" * 3000)}, "messages", "2048 positions"),
        ({"messages": user("see <image> here")}, "messages[0].content", "image parts"),
        ({"messages": user(b"not an image")}, "messages[0].content[0]", "not an image"),
        ({"messages": user(png(0)[:200])}, "messages[0].content[0]", "truncated"),
        ({"messages": [{"role": "assistant", "content": [{"type": "image", "image": b""}]}]},
         "messages[0].content[0]", "only user messages"),
    ],
)
def test_requests_that_cannot_be_served_name_the_field(engine, request_kwargs, param, match):
    with pytest.raises(RequestError, match=match) as error:
        engine.submit(Request(**request_kwargs))
    assert error.value.param == param


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(parts):
    with Engine(*parts, max_image_pixels=100) as engine:
        with pytest.raises(RequestError, match="over the limit of 100") as error:
            engine.submit(Request(user(png(0)), max_tokens=1))
    assert error.value.param == "messages[0].content[0]"


def test_concurrent_submitters_all_get_their_answers(engine, alone):
    requests = [Request(user(f"question number {index}" * (index + 1)), max_tokens=3 + index) for index in range(6)]
    answers = [None] * len(requests)

    def ask(index):
        answers[index] = engine.generate(requests[index], timeout=120)

    threads = [threading.Thread(target=ask, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert answers == [alone.generate(request, timeout=60) for request in requests]


def test_an_answer_from_cached_image_features_keeps_the_stacks(parts, monkeypatch):
    """The image cache holds the stacks with the sequence features: the prefill of a second request about an
    image (its features from the cache, no vision tower run) gets the same stack rows as the first, and the same
    answer (a cache that dropped the stacks would serve `none` silently: docs/scaling.md)."""
    model, processor = parts
    stacks_seen = []
    forward = model.forward

    def spy(*args, **kwargs):
        image = (kwargs.get("mm_encoder_outputs") or {}).get("image")
        if image is not None:
            stacks_seen.append([feature_rows(stack).clone() for stack in image.deepstack_features or []])
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    request = Request(user(png(11), "what is it?"), max_tokens=8)
    with Engine(model, processor, batch_wait_ms=0) as engine:
        new = engine.submit(request)
        new.result(timeout=60)
        cached = engine.submit(request)
        cached.result(timeout=60)
        assert len(engine.images) == 1
    assert cached.token_ids == new.token_ids
    first, second = stacks_seen
    assert len(first) == model.config.num_injected_stacks and all(rows.abs().max() > 0 for rows in first)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


# ---- DeepStack-HD: each image takes its own token count (docs/method.md, "DeepStack-HD") ------------------
# (width, height) -> image tokens, worked by hand in test_hd.py: 16 (base) + kept rows * (kept columns + 1)
HD_TOKENS = {(48, 40): 16 + 6 * 9, (30, 64): 16 + 8 * 5, (100, 40): 16 + 4 * 11, (64, 64): 16 + 8 * 9}


@pytest.fixture(scope="module")
def hd_parts():
    return tiny("llm", image_grid_pinpoints=PINPOINTS)


def hd_requests() -> list[Request]:
    """Four different tile grids (2x2 with rows cut, 2x1, 1x3 with columns cut, 2x2), one, two or no images."""
    return [
        Request(user(png(0, (48, 40)), "short"), max_tokens=6),
        Request(user("a longer question before the image", png(1, (30, 64)), "and after it"), max_tokens=9),
        Request(user(png(2, (100, 40)), png(3, (64, 64)), "two images"), max_tokens=7),
        Request(user("no image at all"), max_tokens=4),
    ]


def test_hd_batch_of_different_grids_equals_each_request_alone_and_counts_each_images_tokens(hd_parts, alone):
    requests = hd_requests()
    with Engine(*hd_parts, max_batch_size=4, batch_wait_ms=500) as together, \
            Engine(*hd_parts, max_batch_size=1, batch_wait_ms=0) as one_by_one:
        streams = [together.submit(request) for request in requests]
        answers = [stream.result(timeout=120) for stream in streams]
        assert together.largest_batch == 4
        for request, stream, answer in zip(requests, streams, answers):
            single = one_by_one.submit(request)
            assert single.result(timeout=120) == answer and single.token_ids == stream.token_ids
    # the same text with the plain model's 16 tokens per image (same tokenizer and template), per image replaced
    # by the hand-worked HD count
    images = [[(48, 40)], [(30, 64)], [(100, 40), (64, 64)], []]
    for request, answer, sizes in zip(requests, answers, images):
        plain = alone.submit(Request(request.messages, max_tokens=1))
        plain.result(timeout=60)
        assert answer.prompt_tokens == plain.prompt_tokens + sum(HD_TOKENS[size] - 16 for size in sizes)


def test_hd_engine_streams_the_answer_of_model_generate(hd_parts):
    model, processor = hd_parts
    image = random_image(4, (30, 64))
    inputs = processor(images=[image], text="<image>\nwhat is it?", use_chat_template=True)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == HD_TOKENS[(30, 64)]
    expected = model.generate(**inputs, max_new_tokens=12, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    with Engine(model, processor, batch_wait_ms=0) as engine:
        stream = engine.submit(Request(user(image, "what is it?"), max_tokens=12))
        deltas = list(stream)
        answer = stream.result(timeout=60)
    assert stream.token_ids == expected.tolist()
    assert len(deltas) > 1 and "".join(deltas) == answer.text
    assert answer.prompt_tokens == inputs["input_ids"].shape[1]


def test_hd_follow_up_turn_from_cached_features_equals_uncached(hd_parts):
    """The cached rows of an HD image (its own count of sequence and stack rows, newline rows included) give a
    follow-up turn the answer an engine without a cache gives, and the vision tower does not run again."""
    model, processor = hd_parts
    turn = user(png(5, (100, 40)), "what is this?", png(6, (48, 40)))
    calls = []
    hook = model.vision_tower.register_forward_hook(lambda *_: calls.append(1))
    try:
        with Engine(model, processor, batch_wait_ms=0) as cached:
            first = cached.generate(Request(turn, max_tokens=4), timeout=60)
            follow_up = turn + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "sure?"}]
            encoded = len(calls)
            again = cached.submit(Request(follow_up, max_tokens=8))
            again.result(timeout=60)
            assert encoded > 0 and len(calls) == encoded
            wide = cached.images.get(image_key(png(5, (100, 40))))
            small = cached.images.get(image_key(png(6, (48, 40))))
        # per image its own rows, every stack as long as the sequence; the 48x40 image's 6 kept rows of 8 tokens
        # each end in a newline, at 16 + 9r + 8, where every stack row is zero (docs/method.md)
        stacks = model.config.num_injected_stacks
        for image, size in ((wide, (100, 40)), (small, (48, 40))):
            assert image.sequence.shape[0] == HD_TOKENS[size] and image.stacks.shape[:2] == (stacks, HD_TOKENS[size])
        newlines = [16 + 9 * row + 8 for row in range(6)]
        is_zero = (small.stacks == 0).all(dim=-1).all(dim=0)
        assert is_zero.nonzero().flatten().tolist() == newlines
        with Engine(model, processor, batch_wait_ms=0, image_cache_bytes=0) as uncached:
            fresh = uncached.submit(Request(follow_up, max_tokens=8))
            fresh.result(timeout=60)
            assert len(uncached.images) == 0 and len(calls) > encoded
    finally:
        hook.remove()
    assert again.token_ids == fresh.token_ids


def test_hd_context_check_names_each_images_own_token_count(hd_parts):
    with Engine(*hd_parts) as engine:
        with pytest.raises(RequestError, match=r"\(images: 70 \+ 56 tokens\) but the model has 2048 positions"):
            engine.submit(Request(user(png(0, (48, 40)), png(1, (30, 64)), "x" * 2000)))


def test_a_prompt_head_shared_by_requests_is_computed_once_and_answers_do_not_change():
    """The system turn the requests share (the head before the first image) is prefilled once and copied into
    each row; each answer is the one an engine that prefills every prompt whole gives, alone or batched, also
    when a request with another system turn replaces the cached head, or shares only part of it."""
    system = [{"role": "system", "content": "You answer questions about images in a few plain words."}]
    other = [{"role": "system", "content": "You are a careful assistant who looks at every image twice."}]
    requests = [Request(system + request.messages, max_tokens=request.max_tokens)
                for request in requests_of_different_lengths()]
    parts = sharpened(tiny("llm"))
    requests += [Request(other + user(png(3), "what now?"), max_tokens=5),
                 Request([{"role": "system", "content": "You answer questions about images in a few words."}]
                         + user(png(1), "shorter head"), max_tokens=5)]
    with Engine(*parts, max_batch_size=4, batch_wait_ms=500, share_prefix=False) as whole:
        expected = [whole.submit(request) for request in requests]
        expected = [stream.result(timeout=120) and stream.token_ids for stream in expected]
        assert whole.shared_tokens == 0
    with Engine(*parts, max_batch_size=4, batch_wait_ms=500) as sharing:
        together = [sharing.submit(request) for request in requests]
        assert [stream.result(timeout=120) and stream.token_ids for stream in together] == expected
        assert sharing.shared_tokens > 0
    with Engine(*parts, max_batch_size=1, batch_wait_ms=0) as sharing_alone:
        for request, tokens in zip(requests, expected):
            stream = sharing_alone.submit(request)
            stream.result(timeout=120)
            assert stream.token_ids == tokens
        assert sharing_alone.shared_tokens > 0


def test_a_video_part_is_answered_as_its_frame_mosaic(tmp_path):
    """A video part (a video file's bytes, or its frames) reaches the model as docs/video.md's one image, the
    mosaic of its sampled frames: its answer is the answer to that mosaic sent as an image, another video gets
    another answer, and bytes that are not a video are refused naming the part."""
    from deepstack.model.video import frames_to_image
    from deepstack.model.video_file import load_video
    from tests.video_clips import write_clip

    clips = [write_clip(tmp_path / f"clip{seed}.mp4", [random_image(10 * seed + index, (32, 24)) for index in range(8)])
             for seed in range(3)]
    frames = [random_image(100 + index, (32, 24)) for index in range(9)]
    with Engine(*sharpened(tiny("llm")), max_batch_size=4, batch_wait_ms=0) as engine:
        def tokens(part: dict) -> list[int]:
            stream = engine.submit(Request([{"role": "user", "content": [part, {"type": "text", "text": "what now?"}]}],
                                           max_tokens=6))
            stream.result(timeout=120)
            return stream.token_ids

        by_video = [tokens({"type": "video", "video": clip.read_bytes()}) for clip in clips]
        assert by_video == [tokens({"type": "image", "image": load_video(clip)}) for clip in clips]
        assert len({tuple(answer) for answer in by_video}) > 1
        assert tokens({"type": "video", "video": frames}) == tokens({"type": "image", "image": frames_to_image(frames)})
        with pytest.raises(RequestError, match=r"messages\[0\]\.content\[0\]: the video: not a video file") as caught:
            tokens({"type": "video", "video": b"\x00\x01 not a video at all" * 10})
        assert caught.value.param == "messages[0].content[0]" and "deepstack-video-" not in str(caught.value)
        with pytest.raises(RequestError, match="only user messages may hold images and videos"):
            Request([{"role": "assistant", "content": [{"type": "video", "video": frames}]}])
