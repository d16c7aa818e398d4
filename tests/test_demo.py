"""The fine-detail task and `deepstack demo --quick` (issue 4)."""

import json

import numpy as np
from PIL import Image

from deepstack.apps.cli import main
from deepstack.apps.finedetail import CANVAS, make_data, normalise


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


def test_patterns_vanish_at_the_global_size_and_show_at_the_hires_size(tmp_path):
    make_data(tmp_path, seed=0, sizes={"train": 12, "val": 1, "test": 1})
    for record in json.loads((tmp_path / "train.json").read_text()):
        image = Image.open(tmp_path / "images" / record["image"])
        square = np.asarray(image.convert("L"), dtype=np.float32)[-12:-2, -12:-2]
        small = np.asarray(image.convert("L").resize((CANVAS // 2, CANVAS // 2), Image.Resampling.BICUBIC),
                           dtype=np.float32)[-5:-2, -5:-2]
        assert square.std() > 90  # black and white lines at full size
        assert small.std() < 12  # a flat grey at the global view's size


def test_normalise():
    assert normalise("  The Circle. ") == "circle" and normalise("7!") == "7"


def test_quick_demo_completes_with_sane_results(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--steps", "20"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [run["mode"] for run in results["runs"]] == ["none", "llm"]
    for run in results["runs"]:
        assert 0 <= run["fine_accuracy"] <= 1 and 0 <= run["coarse_accuracy"] <= 1
        assert run["llm_image_tokens"] == 16 and run["prefill_ms"] > 0
    assert [run["visual_tokens_seen"] for run in results["runs"]] == [16, 80]
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert "fine acc" in capsys.readouterr().out
