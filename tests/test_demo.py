"""The fine-detail task and `deepstack demo --quick`."""

import itertools
import json
import random

import numpy as np
from PIL import Image

from deepstack.cli import main
from deepstack.research.tasks.finedetail import CANVAS, PATTERNS, SHAPES, Scene, draw_scene, make_data


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


def test_quick_demo_completes_with_sane_results(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--steps", "20"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [run["mode"] for run in results["runs"]] == ["none", "llm"]
    for run in results["runs"]:
        assert 0 <= run["fine_accuracy"] <= 1 and 0 <= run["coarse_accuracy"] <= 1
        assert run["llm_image_tokens"] == 16 and run["prefill_ms"] > 0
    assert [run["visual_tokens_seen"] for run in results["runs"]] == [16, 80]
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert "visual tokens" in capsys.readouterr().out
