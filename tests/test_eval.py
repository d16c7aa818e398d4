"""Scoring: the normalisation and exact match of the built-in task, accuracy by group, and the evaluator."""

import json

import pytest
from PIL import Image

from deepstack.eval.metrics import accuracy, exact_match, normalise, tally
from deepstack.eval.runner import evaluate
from tests.fixtures import tiny


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  The Circle. ", "circle"),  # case, articles, punctuation, outer spaces
        ("7!", "7"),
        ("an  orange,square", "orange square"),  # punctuation becomes a space, spaces collapse
        ("A", ""),  # only an article
        ("theme", "theme"),  # an article inside a word stays
    ],
)
def test_normalise(text, expected):
    assert normalise(text) == expected


def test_exact_match_compares_normalised_strings():
    assert exact_match("The red.", "red") and exact_match("RED", " red ")
    assert not exact_match("red square", "red") and not exact_match("", "red")


def test_accuracy_overall_and_by_group():
    predictions = [
        {"kind": "fine", "correct": True}, {"kind": "fine", "correct": False}, {"kind": "fine", "correct": False},
        {"kind": "coarse", "correct": True}, {"correct": True},  # no kind: counts in "all" only
    ]
    assert tally(predictions, by="kind") == {"all": (3, 5), "fine": (1, 3), "coarse": (1, 1)}
    assert accuracy(predictions, by="kind") == {"all": 0.6, "fine": pytest.approx(1 / 3), "coarse": 1.0}
    assert accuracy(predictions) == {"all": 0.6}


def test_evaluate_scores_each_record_and_carries_its_fields(tmp_path):
    model, processor = tiny("llm")
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "a.png")
    records = [
        {"id": f"r{index}", "image": "a.png", "kind": kind, "question": name,
         "conversations": [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": gold}]}
        for index, (kind, name, gold) in enumerate([("coarse", "colour", "red"), ("fine", "digit", "7"),
                                                    ("fine", "digit", "3")])
    ]
    (tmp_path / "test.json").write_text(json.dumps(records))
    scores = evaluate(model, processor, tmp_path / "test.json", tmp_path, batch_size=2, max_new_tokens=3,
                      progress=False)
    predictions = scores["predictions"]
    assert [p["id"] for p in predictions] == ["r0", "r1", "r2"]
    assert [p["question"] for p in predictions] == ["colour", "digit", "digit"]
    assert all(p["prompt"] == "What colour?" and p["image"] == "a.png" for p in predictions)
    assert [p["answer"] for p in predictions] == ["red", "7", "3"]
    assert all(p["correct"] == exact_match(p["prediction"], p["answer"]) for p in predictions)
    assert scores["count"] == {"all": 3, "coarse": 1, "fine": 2}
    # the same image and prompt: greedy decoding gives one answer for all three records
    assert len({p["prediction"] for p in predictions}) == 1
    expected_fine = sum(p["correct"] for p in predictions[1:]) / 2
    assert scores["accuracy"]["fine"] == expected_fine
