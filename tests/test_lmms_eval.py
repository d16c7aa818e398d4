"""The lmms-eval plugin (``lmms-eval --model deepstack``, docs/eval.md): lmms-eval's own harness runs a saved model
through it, with the answers and scores ``deepstack eval`` gives; and lmms-eval's implementations of the paper's
metrics score the same hard cases as ours, except where they depart from the benchmark's definition (spelled out
case by case below).

lmms-eval lives in its own venv, .venv-lmms (``bash scripts/setup_lmms_eval.sh``): these tests run it in a
subprocess, are skipped when it is absent, and are marked slow (lmms-eval takes 20-60 s to start on two cores).
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from deepstack.eval.benchmark import load_task, read_predictions, run_benchmark, score_predictions
from deepstack.eval.metrics import anls, pope_scores, relaxed_accuracy, vqa_accuracy
from deepstack.model.builder import load_pretrained
from tests.fixtures import random_image, sharpened, tiny

ROOT = Path(__file__).resolve().parents[1]
LMMS_BIN = ROOT / ".venv-lmms" / "bin"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (LMMS_BIN / "python").is_file(),
                       reason=".venv-lmms (lmms-eval's own venv) is absent; `bash scripts/setup_lmms_eval.sh` makes it"),
]
TOKENS = 6  # a random tiny model's answers are noise; a few tokens exercise the whole path
OTHER = "zzqx"  # a gold answer no prediction of the tiny model normalises to


def lmms_env(tmp_path: Path) -> dict[str, str]:
    """lmms-eval offline, its dataset cache under ``tmp_path``."""
    return {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    model, processor = sharpened(tiny("llm"))  # answers that differ by question and end at different steps
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_textvqa(folder: Path, count: int) -> Path:
    """A TextVQA release of ``count`` questions on random images (the answers are set later)."""
    (folder / "train_images").mkdir(parents=True)
    records = []
    for index in range(count):
        random_image(index, (40 + 8 * index, 40)).save(folder / "train_images" / f"img{index}.jpg")
        records.append({"question_id": 100 + index, "image_id": f"img{index}", "question": f"what is sign {index}?",
                        "answers": [OTHER] * 10})
    (folder / "TextVQA_0.5.1_val.json").write_text(json.dumps({"data": records}))
    return folder


# ---- lmms-eval's evaluator through the plugin --------------------------------------------------------------

TASK_UTILS = '''
from PIL import Image
# lmms-eval's own TextVQA scoring: its answer processing and VQA accuracy
from lmms_eval.tasks.textvqa.utils import textvqa_process_results as process_results


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["prompt"]
'''

GENERATE_TASK = """task: deepstack_textvqa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answers
generation_kwargs:
  max_new_tokens: {tokens}
  until: ["ASSISTANT:"]
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

CHOICE_TASK = """task: deepstack_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: multiple_choice
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_choice: choices
doc_to_target: 0
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@torch.inference_mode()
def reference_loss(model, processor, image, question: str, continuation: str) -> tuple[float, bool]:
    """The continuation's mean negative log-probability per token after the prompt ``deepstack eval`` asks (the
    image's placeholder, a new line, the question, as a chat turn), and whether greedy decoding gives it: the
    prompt alone, then extended by each of the continuation's tokens in turn, one forward pass per token."""
    prompt = processor(images=[image], text=[f"{processor.image_token}\n{question}"], use_chat_template=True)
    tokens = processor.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    logprob, greedy = 0.0, True
    for count, token in enumerate(tokens):
        ids = torch.cat([prompt["input_ids"], torch.tensor([tokens[:count]], dtype=torch.long)], dim=1)
        logits = model(input_ids=ids, pixel_values=prompt["pixel_values"]).logits[0, -1].float()
        logprob += logits.log_softmax(-1)[token].item()
        greedy &= int(logits.argmax()) == token
    return -logprob / len(tokens), greedy


def greedy_character(model, processor, image, question: str) -> str | None:
    """The next character greedy decoding writes after the prompt, when it is one printable ASCII token."""
    prompt = processor(images=[image], text=[f"{processor.image_token}\n{question}"], use_chat_template=True)
    with torch.inference_mode():
        token = int(model(**prompt).logits[0, -1].argmax())
    text = processor.tokenizer.decode([token])
    round_trip = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(text) == 1 and text.isascii() and text.isprintable() and round_trip == [token] else None


def run_lmms_eval(saved: Path, tasks: Path, out: Path, tmp_path: Path) -> tuple[dict, dict[str, list[dict]]]:
    """``lmms-eval --model deepstack`` on the tasks in ``tasks``: lmms-eval's results and its logged samples."""
    command = [str(LMMS_BIN / "lmms-eval"), "--model", "deepstack", "--model_args", f"pretrained={saved}",
               "--tasks", "deepstack_textvqa,deepstack_choice", "--include_path", str(tasks), "--batch_size", "2",
               "--output_path", str(out), "--log_samples"]
    done = subprocess.run(command, env=lmms_env(tmp_path), capture_output=True, text=True, timeout=900)
    # lmms-eval logs an error in the evaluation and still exits 0: then it has written no results
    found = list(out.glob("*/*_results.json"))
    assert done.returncode == 0 and len(found) == 1, done.stdout[-3000:] + done.stderr[-3000:]
    (results,) = found
    samples = {task: [json.loads(line) for line in next(out.glob(f"*/*_samples_{task}.jsonl")).read_text().splitlines()]
               for task in ("deepstack_textvqa", "deepstack_choice")}
    return json.loads(results.read_text())["results"], samples


def test_lmms_eval_runs_the_model_with_the_answers_and_scores_of_deepstack_eval(saved, tmp_path):
    # our own path: deepstack eval's run, then its answers made right for k of the ten annotators
    data = write_textvqa(tmp_path / "textvqa", count=5)
    model, processor = load_pretrained(saved)
    run_benchmark(model, processor, "textvqa", data, tmp_path / "ours", batch_size=3, max_new_tokens=TOKENS,
                  progress=False)
    predictions = read_predictions(tmp_path / "ours" / "predictions.jsonl")
    release = json.loads((data / "TextVQA_0.5.1_val.json").read_text())
    agreeing = [0, 1, 2, 3, 10]  # VQA accuracy 0, 0.3, 0.6, 0.9 and 1 (tests/test_metrics.py works them out)
    for record, matches in zip(release["data"], agreeing):
        record["answers"] = [predictions[str(record["question_id"])]] * matches + [OTHER] * (10 - matches)
    (data / "TextVQA_0.5.1_val.json").write_text(json.dumps(release))
    expected = (0 + 0.3 + 0.6 + 0.9 + 1.0) / 5
    ours = score_predictions("textvqa", data, tmp_path / "ours" / "predictions.jsonl", tmp_path / "scored")
    assert ours["score"] == pytest.approx(expected)

    # the same questions as lmms-eval tasks: answered (generate_until) and scored by lmms-eval's TextVQA code;
    # and a multiple-choice task (loglikelihood, lmms-eval picks the choice of least loss) whose first choice is the
    # greedy next character where there is one
    items = load_task("textvqa", data).items
    documents, losses = [], []
    for item in items:
        picture = Image.open(item.image).convert("RGB")
        first = greedy_character(model, processor, picture, item.prompt) or "a"
        choices = [first, "blue"]
        documents.append({"question_id": int(item.question_id), "prompt": item.prompt, "image": str(item.image),
                          "answers": list(item.answers), "choices": choices})
        losses.append([reference_loss(model, processor, picture, item.prompt, choice) for choice in choices])
    assert sum(greedy for pairs in losses for _, greedy in pairs) >= 2, "too few greedy choices to test them"
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    docs = tasks / "docs.jsonl"
    docs.write_text("".join(json.dumps(document) + "\n" for document in documents))
    (tasks / "utils.py").write_text(TASK_UTILS)
    (tasks / "deepstack_textvqa.yaml").write_text(GENERATE_TASK.format(docs=docs, tokens=TOKENS))
    (tasks / "deepstack_choice.yaml").write_text(CHOICE_TASK.format(docs=docs))
    results, samples = run_lmms_eval(saved, tasks, tmp_path / "lmms", tmp_path)

    assert sorted(sample["doc_id"] for sample in samples["deepstack_textvqa"]) == list(range(len(items)))
    for sample in samples["deepstack_textvqa"]:
        assert sample["filtered_resps"] == predictions[str(documents[sample["doc_id"]]["question_id"])]
    assert results["deepstack_textvqa"]["exact_match,none"] == pytest.approx(expected)

    for sample in samples["deepstack_choice"]:  # batched (right-padded) there, one token at a time here
        logged = [(float(loss), greedy in (True, "True")) for loss, greedy in sample["filtered_resps"]]
        reference = losses[sample["doc_id"]]
        assert [greedy for _, greedy in logged] == [greedy for _, greedy in reference]
        assert [loss for loss, _ in logged] == pytest.approx([loss for loss, _ in reference], abs=1e-4)
    picked_first = [min(range(2), key=lambda choice: pairs[choice][0]) == 0 for pairs in losses]
    assert results["deepstack_choice"]["acc,none"] == pytest.approx(sum(picked_first) / len(picked_first))


# ---- lmms-eval's metrics against ours ----------------------------------------------------------------------

LMMS_METRICS = '''
import json, sys
from lmms_eval.api.metrics import anls
from lmms_eval.tasks.chartqa.utils import relaxed_correctness
from lmms_eval.tasks.pope import utils as pope
from lmms_eval.tasks.textvqa.utils import textvqa_process_results
from lmms_eval.tasks.vqav2.utils import vqav2_process_results

cases = json.load(sys.stdin)
vqav2 = lambda answers: [{"answer": answer, "answer_id": number} for number, answer in enumerate(answers, 1)]
per_question = [pope.pope_process_results({"question_id": index, "answer": label}, [prediction])
                for index, (prediction, label) in enumerate(zip(*cases["pope"]))]
print(json.dumps({
    "textvqa": [textvqa_process_results({"question_id": 0, "answers": list(answers)}, [prediction])["exact_match"]
                for prediction, answers in cases["vqa"]],
    "vqav2": [vqav2_process_results({"question_id": 0, "answers": vqav2(answers)}, [prediction])["exact_match"]
              for prediction, answers in cases["vqa"]],
    "anls": [anls(answers, [prediction])["anls"] for prediction, answers in cases["anls"]],
    "chartqa": [float(relaxed_correctness(prediction, answer)) for prediction, answer in cases["chartqa"]],
    "pope": {name: getattr(pope, "pope_aggregate_" + name)([scores["pope_" + name] for scores in per_question])
             for name in ("accuracy", "precision", "recall", "f1_score", "yes_ratio")},
}))
'''

# (prediction, ten gold answers, ours, lmms-eval's TextVQA, lmms-eval's VQAv2). The VQA challenge's processing
# (its evaluation page and script) is the definition; where lmms-eval departs from it the comment says how.
VQA = [
    ("the cat", ["cat"] * 3 + ["dog"] * 7, 0.9, 0.9, 0.9),  # article; three of ten: 0.9
    ("A dog!", ["dog"] * 4 + ["cat"] * 6, 1.0, 1.0, 1.0),  # article and punctuation; four of ten: 1
    ("Two", ["2"] * 10, 1.0, 1.0, 1.0),  # number word. The official script processes nothing when the ten
    # answers agree and would score 0 here; its evaluation page, lmms-eval and we process every answer
    ("twelve", ["12"] * 10, 0.0, 0.0, 0.0),  # number words stop at ten
    ("1,000", ["1000"] * 5 + ["100"] * 5, 1.0, 1.0, 1.0),  # a digit-comma-digit comma is deleted
    ("4.5.", ["4.5"] * 3 + ["4"] * 7, 0.9, 0.9, 0.9),  # a full stop goes unless a digit follows
    ("Yes, it is.", ["yes"] * 10, 0.0, 0.0, 0.0),  # yes in free text is not "yes"
    ("", ["yes"] * 9 + [""], 0.3, 0.3, 0.3),  # the empty prediction matches one empty answer of ten
    ("dont", ["don't"] * 4 + ["do"] * 6, 1.0, 1.0, 1.0),  # a contraction typed without its apostrophe
    # lmms-eval's TextVQA runs MMF's extra step first (commas deleted, "'s" split off) on both sides:
    ("red,white", ["red white"] * 6 + ["red"] * 4, 1.0, 0.0, 1.0),  # there "redwhite" against "red white"
    ("whats", ["what's"] * 5 + ["why"] * 5, 1.0, 0.0, 1.0),  # there "what's" against "what 's"
    ("whys", ["why's"] * 5 + ["why"] * 5, 1.0, 0.0, 1.0),  # the official table restores "why's" too
]
# (prediction, gold answers, ours, lmms-eval's). ANLS as Biten et al. 2019 define it: s = 1 - NL when NL < 0.5,
# else 0; NL on lower-cased strings with spaces collapsed, divided by the longer of the two.
ANLS = [
    ("Paris", ["paris"], 1.0, 1.0),
    ("  PARIS   France ", ["paris france"], 1.0, 1.0),  # case and spaces do not count
    ("1995", ["1996", "1995"], 1.0, 1.0),  # the best gold answer
    ("Barack Obama", ["barack obama jr"], 0.8, 0.8),  # 3 edits over 15 characters
    ("", ["abc"], 0.0, 0.0),  # an empty prediction
    ("ab", ["ac"], 0.0, 0.5),  # NL = 1/2 is not < 0.5: 0; lmms-eval zeroes only scores below 0.5
    ("new  york", ["new yorq"], 0.875, 8 / 9),  # 1 edit over 8 characters; lmms-eval divides by the length of
    # the prediction as written (9, two spaces), not of the compared strings
]
# (prediction, gold answer, ours, lmms-eval's). ChartQA (Masry et al. 2022): a number within 5% of the gold
# number, anything else an exact match; lmms-eval's is Pix2Struct's reference code.
CHARTQA = [
    ("4.9", "5", 1.0, 1.0),  # 2% off
    ("5.3", "5", 0.0, 0.0),  # 6% off
    ("2014", "2015", 1.0, 1.0),  # 0.05% off: years are numbers too, in both
    ("12%", "12%", 1.0, 1.0),
    ("0", "0", 1.0, 1.0),
    ("Yes", "yes", 1.0, 1.0),  # case does not count
    ("five", "5", 0.0, 0.0),  # no number words
    ("", "5", 0.0, 0.0),
    ("12%", "12", 1.0, 0.0),  # lmms-eval reads 12% as 0.12; the gold labels carry no % sign
    ("1,234", "1234", 1.0, 0.0),  # lmms-eval does not read 1,234 as a number
    ("0.0", "0", 1.0, 0.0),  # against a gold 0 lmms-eval compares the strings
    (" yes", "yes", 1.0, 0.0),  # lmms-eval does not strip the prediction (deepstack's answers are stripped)
]
# POPE: ten free-text answers and their labels.
POPE_PREDICTIONS = ["yes", "Yes", "no", "No", "Yes, there is a dog.", "No.", "There isn't one.", "", "yes", "Yes"]
POPE_LABELS = ["yes", "no", "no", "yes", "yes", "no", "no", "yes", "no", "no"]
# Ours reads yes/no from the text: TP 0, 4; FP 1, 8, 9; TN 2, 5, 6; FN 3 and 7 (says neither, the object is there)
POPE_OURS = {"accuracy": 5 / 10, "precision": 2 / 5, "recall": 2 / 4, "f1": 2 * (2 / 5) * (2 / 4) / (2 / 5 + 2 / 4),
             "yes_ratio": 5 / 10}
# lmms-eval's takes only an answer that is exactly "yes" or "no" (any case): right 0 and 2; TP 0, FP 1, 8, 9
# (exact "yes" on a no), FN 3 (exact "no" on a yes; 4 and 7 count nowhere); its yes ratio is the fraction of gold
# labels that are yes (4 of 10), not of answers that are yes, as POPE defines it.
# (POPE's own script reads the first sentence as no when it holds the word no/No/not and as yes otherwise:
# "There isn't one." and "" are yes there; its scores would be 5/10, 3/7, 3/4, 18/33 and 7/10.)
POPE_LMMS = {"accuracy": 2 / 10, "precision": 1 / 4, "recall": 1 / 2,
             "f1_score": 2 * (1 / 4) * (1 / 2) / (1 / 4 + 1 / 2), "yes_ratio": 4 / 10}


@pytest.fixture(scope="module")
def lmms_scores() -> dict:
    cases = {"vqa": [case[:2] for case in VQA], "anls": [case[:2] for case in ANLS],
             "chartqa": [case[:2] for case in CHARTQA], "pope": [POPE_PREDICTIONS, POPE_LABELS]}
    done = subprocess.run([str(LMMS_BIN / "python"), "-c", LMMS_METRICS], input=json.dumps(cases),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_vqa_accuracy_against_lmms_eval(lmms_scores):
    assert [vqa_accuracy(prediction, answers) for prediction, answers, *_ in VQA] == pytest.approx(
        [ours for *_, ours, _, _ in VQA])
    assert lmms_scores["textvqa"] == pytest.approx([textvqa for *_, textvqa, _ in VQA])
    assert lmms_scores["vqav2"] == pytest.approx([vqav2 for *_, vqav2 in VQA])


def test_anls_against_lmms_eval(lmms_scores):
    assert [anls(prediction, answers) for prediction, answers, _, _ in ANLS] == pytest.approx(
        [ours for _, _, ours, _ in ANLS])
    assert lmms_scores["anls"] == pytest.approx([theirs for *_, theirs in ANLS])


def test_relaxed_accuracy_against_lmms_eval(lmms_scores):
    assert [relaxed_accuracy(prediction, [answer]) for prediction, answer, _, _ in CHARTQA] == [
        ours for _, _, ours, _ in CHARTQA]
    assert lmms_scores["chartqa"] == [theirs for *_, theirs in CHARTQA]


def test_pope_scores_against_lmms_eval(lmms_scores):
    ours = pope_scores(POPE_PREDICTIONS, POPE_LABELS)
    assert {name: ours[name] for name in POPE_OURS} == pytest.approx(POPE_OURS)
    assert lmms_scores["pope"] == pytest.approx(POPE_LMMS)


def test_the_model_arguments_are_checked_before_loading(saved):
    script = f'''
from deepstack.eval.lmms_eval_model import DeepStackLMMS
for arguments in ("pretrained={saved},beams=2", "", "pretrained={saved},batch_size=auto"):
    try:
        DeepStackLMMS.create_from_arg_string(arguments)
    except ValueError as error:
        print(error)
'''
    done = subprocess.run([str(LMMS_BIN / "python"), "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    unknown, missing, automatic = done.stdout.strip().splitlines()[-3:]
    assert "unknown argument(s) beams" in unknown and "pretrained, device, dtype" in unknown
    assert "give pretrained=FOLDER" in missing
    assert "batch_size is 'auto'" in automatic
