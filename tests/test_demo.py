"""The fine-detail task and `deepstack demo --quick`."""

import itertools
import json
import random

import numpy as np
import pytest
from PIL import Image

from deepstack.cli import main
from deepstack.research.tasks.finedetail import CANVAS, PATTERNS, QUESTIONS, SHAPES, Scene, draw_scene, make_data


def test_make_data_is_deterministic_and_in_llava_format(tmp_path):
    sizes = {"train": 6, "val": 2, "test": 2}
    make_data(tmp_path / "a", seed=3, sizes=sizes)
    make_data(tmp_path / "b", seed=3, sizes=sizes)
    for name in ("train.json", "test.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    first = np.asarray(Image.open(tmp_path / "a" / "images" / "train-00000.png"))
    assert first.shape == (CANVAS, CANVAS, 3)
    assert np.array_equal(first, np.asarray(Image.open(tmp_path / "b" / "images" / "train-00000.png")))
    train = json.loads((tmp_path / "a" / "train.json").read_text())
    assert train[0]["conversations"][0]["value"].startswith("<image>\n")
    assert [t["from"] for t in train[0]["conversations"]] == ["human", "gpt"] * 4
    test = json.loads((tmp_path / "a" / "test.json").read_text())
    assert {r["kind"] for r in test} == {"fine", "coarse"} and len(test) == 2 * 4


def _scenes(tmp_path, count=16):
    make_data(tmp_path, seed=1, sizes={"train": count, "val": 1, "test": 1})
    for record in json.loads((tmp_path / "train.json").read_text()):
        yield Image.open(tmp_path / "images" / record["image"]).convert("L"), record


def test_patterns_vanish_at_the_global_size_and_show_at_the_hires_size():
    for seed in range(6):
        views = {}
        for pattern in PATTERNS:  # the same scene and layout, only the pattern differs
            image, _ = draw_scene(random.Random(seed), Scene("3", pattern, "blue", SHAPES[seed % 3]))
            views[pattern] = (np.asarray(image, dtype=np.float32),
                              np.asarray(image.resize((CANVAS // 2, CANVAS // 2), Image.Resampling.BICUBIC),
                                         dtype=np.float32))
        for a, b in itertools.combinations(PATTERNS, 2):
            full = np.abs(views[a][0] - views[b][0]).max(axis=-1)
            small = np.abs(views[a][1] - views[b][1]).max(axis=-1)
            assert (full > 40).sum() > 200  # hundreds of pixels differ at full size
            # the global views are the same but for the shape's outline (whose rows/columns land on a light or a
            # dark line by the position's parity): under 2 grey levels apart on average
            assert small.mean() < 2 and full.mean() > 5 * small.mean()


def test_the_digit_fills_one_hires_patch(tmp_path):
    # 8 px patches at 64 px: the tag is one patch of the hi-res grid, the top-left one of a global patch
    for image, _ in _scenes(tmp_path):
        grey = np.asarray(image)
        white = np.argwhere(grey >= 245)
        top, left = white.min(axis=0)
        assert top % 16 == 0 and left % 16 == 0 and (white.max(axis=0) - [top, left] <= 7).all()  # stack 0
        tag = grey[top : top + 8, left : left + 8]
        assert (tag < 200).sum() >= 6, "the digit is drawn on the tag"


@pytest.mark.slow
def test_quick_demo_shows_the_claim_in_miniature(tmp_path, capsys):
    """The quick recipe, seed 0: both models answer the coarse question, and only DeepStack-L reads the pattern
    that the 32 px global view averages away (chance: 1 in 3)."""
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    none, llm = results["runs"]
    assert (none["mode"], llm["mode"]) == ("none", "llm")
    assert none["coarse_accuracy"] >= 0.9 and llm["coarse_accuracy"] >= 0.9
    assert llm["per_question"]["pattern"] >= none["per_question"]["pattern"] + 0.30
    assert none["per_question"]["pattern"] <= 0.45  # the global view alone does not show it
    assert set(none["per_question"]) == {"pattern", "colour"}
    assert [run["llm_image_tokens"] for run in results["runs"]] == [16, 16]
    assert [run["visual_tokens_seen"] for run in results["runs"]] == [16, 80]
    printed = capsys.readouterr().out
    assert f"results.json and demo.png in {tmp_path}" in printed and "pattern" in printed
    assert (tmp_path / "demo.png").stat().st_size > 10_000


def test_make_data_asks_only_the_chosen_questions(tmp_path):
    make_data(tmp_path, sizes={"train": 3, "val": 1, "test": 2}, questions=("pattern", "colour"))
    train = json.loads((tmp_path / "train.json").read_text())
    asked = {turn["value"].replace("<image>\n", "") for record in train for turn in record["conversations"][::2]}
    assert asked == {QUESTIONS["pattern"][1], QUESTIONS["colour"][1]}
    test = json.loads((tmp_path / "test.json").read_text())
    assert [record["question"] for record in test] == ["pattern", "colour"] * 2
    with pytest.raises(ValueError, match="unknown question"):
        make_data(tmp_path, sizes={"train": 1}, questions=("texture",))
