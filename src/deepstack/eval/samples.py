"""Small synthetic benchmarks in each release format ``loaders`` reads, so that an evaluation can be shown end to
end on a fresh machine with nothing downloaded (``deepstack make-eval-data OUT``).

Every image is drawn here with PIL: coloured shapes, signs with a word, one-page forms, bar charts. The
records copy each release's layout (file names, fields, image folders) and its kind of gold answer: ten
annotator answers for TextVQA, several accepted strings for DocVQA, InfoVQA (with its question types) and
MP-DocVQA (documents of several pages), numbers for ChartQA, yes/no for POPE, option letters for multiple
choice, short answers for LLaVA question files. The questions are easy for a
person and for a trained model; they exist to exercise the pipeline, not to rank models.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .loaders import SHORT_ANSWER
from .video_samples import write_video_samples

COLOURS = {
    "red": (210, 40, 40), "green": (40, 160, 70), "blue": (40, 80, 210), "yellow": (235, 200, 40),
    "purple": (130, 50, 170), "orange": (240, 130, 30), "black": (20, 20, 20), "pink": (235, 120, 170),
}
SHAPES = ("circle", "square", "triangle")
WORDS = ("stop", "exit", "open", "cafe", "hotel", "bank", "taxi", "park", "sale", "bus", "school", "market")
MONTHS = ("January", "March", "May", "July", "September", "November")
SIZE = 128  # pixels a side for pictures; big enough that the drawn text is legible at LLaVA's 336 input

SAMPLE_DATA = {  # task -> what to pass as its data, relative to the samples folder
    "textvqa": "textvqa",
    "docvqa": "docvqa",
    "infovqa": "infovqa",
    "multidocvqa": "multidocvqa",
    "chartqa": "chartqa",
    "pope": "pope",
    "multiple_choice": "multiple_choice/questions.jsonl",
    "llava": "llava/questions.jsonl",
}


def write_samples(out: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write every sample benchmark under ``out`` (one folder each); returns task name -> the path to pass as
    that task's data (a folder, or the question file for ``multiple_choice`` and ``llava``)."""
    out = Path(out)
    writers = {"textvqa": _textvqa, "docvqa": _docvqa, "infovqa": _infovqa, "multidocvqa": _multidocvqa,
               "chartqa": _chartqa, "pope": _pope, "multiple_choice": _multiple_choice, "llava": _llava}
    for task, write in writers.items():
        folder = out / task
        folder.mkdir(parents=True, exist_ok=True)
        write(folder, random.Random(f"{seed}-{task}"))
    # and the video QA benchmarks of Table 3, where PyAV is installed (docs/video.md)
    return {task: out / path for task, path in SAMPLE_DATA.items()} | write_video_samples(out, seed)


# --- Drawing ------------------------------------------------------------------------------------------------


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: tuple[int, int, int]):
    left, top, right, bottom = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((left + right) // 2, top), (right, bottom), (left, bottom)], fill=colour)


def _centred_text(draw: ImageDraw.ImageDraw, centre: tuple[int, int], text: str, size: int, fill=(255, 255, 255)):
    draw.text(centre, text, font=_font(size), fill=fill, anchor="mm")


def _picture(shape: str, colour: str, text: str | None = None) -> Image.Image:
    """One shape on a light grey ground, with ``text`` written across it."""
    image = Image.new("RGB", (SIZE, SIZE), (225, 225, 225))
    draw = ImageDraw.Draw(image)
    _shape(draw, shape, (16, 16, SIZE - 16, SIZE - 16), COLOURS[colour])
    if text is not None:
        _centred_text(draw, (SIZE // 2, SIZE // 2 + (10 if shape == "triangle" else 0)), text, 24)
    return image


def _scene(shapes: list[tuple[str, str]]) -> Image.Image:
    """Up to four small shapes, one per quarter of the picture."""
    image = Image.new("RGB", (SIZE, SIZE), (235, 235, 235))
    draw = ImageDraw.Draw(image)
    half = SIZE // 2
    for index, (shape, colour) in enumerate(shapes):
        left, top = (index % 2) * half, (index // 2) * half
        _shape(draw, shape, (left + 8, top + 8, left + half - 8, top + half - 8), COLOURS[colour])
    return image


def _sign(word: str, colour: str) -> Image.Image:
    """A sign on a post, the word in white capitals."""
    image = Image.new("RGB", (SIZE, SIZE), (170, 205, 235))
    draw = ImageDraw.Draw(image)
    draw.rectangle((60, 70, 68, SIZE), fill=(90, 90, 90))
    draw.rectangle((10, 30, SIZE - 10, 80), fill=COLOURS[colour])
    _centred_text(draw, (SIZE // 2, 55), word.upper(), 22)
    return image


def _form(lines: list[str]) -> Image.Image:
    """A one-page document: black text lines on white."""
    image = Image.new("RGB", (2 * SIZE, SIZE + 32), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(lines):
        draw.text((12, 12 + 30 * row), line, font=_font(18), fill=(0, 0, 0))
    return image


def _bar_chart(labels: list[str], values: list[int]) -> Image.Image:
    """Vertical bars, each with its value above and its label below."""
    width, height, floor = 2 * SIZE, SIZE + 32, SIZE + 8
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    step, scale = width // len(labels), (floor - 36) / max(values)
    for index, (label, value) in enumerate(zip(labels, values)):
        left = index * step + 10
        draw.rectangle((left, floor - round(value * scale), left + step - 20, floor), fill=COLOURS["blue"])
        centre = left + (step - 20) // 2
        _centred_text(draw, (centre, floor - round(value * scale) - 10), str(value), 14, fill=(0, 0, 0))
        _centred_text(draw, (centre, floor + 12), label, 14, fill=(0, 0, 0))
    draw.line((0, floor, width, floor), fill=(0, 0, 0), width=1)
    return image


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def _write_lines(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


# --- One writer per release format --------------------------------------------------------------------------


def _textvqa(folder: Path, rng: random.Random) -> None:
    """``TextVQA_0.5.1_val.json`` with ten annotator answers per question, ``train_images/{image_id}.jpg``.
    Most annotators agree; one or two differ, as in the release (a longer phrase, a mistake)."""
    (folder / "train_images").mkdir(exist_ok=True)
    records = []
    for index, word in enumerate(WORDS):
        colour = rng.choice(["red", "green", "blue", "purple", "orange", "black"])
        image_id = f"{rng.getrandbits(64):016x}"
        _sign(word, colour).save(folder / "train_images" / f"{image_id}.jpg", quality=92)
        word_answers = [word] * 8 + [f"{word} sign", rng.choice([w for w in WORDS if w != word])]
        colour_answers = [colour] * 9 + [f"dark {colour}"]
        for question, answers in (("what word is written on the sign?", word_answers),
                                  ("what color is the sign?", colour_answers)):
            records.append({
                "question_id": 1000 + len(records), "image_id": image_id, "question": question,
                "answers": answers, "image_classes": ["street sign"], "set_name": "val",
            })
    _write_json(folder / "TextVQA_0.5.1_val.json",
                {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": records})


def write_docvqa(folder: str | Path, documents: int = 8, seed: int = 0) -> Path:
    """The sample DocVQA set alone, with ``documents`` invoices (three questions each; ``write_samples`` writes
    8), in ``folder``; returns the folder (the task's data). A larger set measures evaluation speed over many
    batches (``research.bench.eval_speed``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _docvqa(folder, random.Random(f"{seed}-docvqa"), documents)
    return folder


def _docvqa(folder: Path, rng: random.Random, documents: int = 8) -> None:
    """``val_v1.0.json`` with several accepted answers per question, ``documents/{doc}.png``."""
    (folder / "documents").mkdir(exist_ok=True)
    records = []
    for document in range(documents):
        number, total = rng.randint(100, 999), rng.randint(10, 99)
        day, month = rng.randint(1, 28), rng.choice(MONTHS)
        name = f"doc{document:03d}"
        _form([f"INVOICE {number}", f"Date: {day} {month}", f"Total: ${total}.00", "Paid: yes"]).save(
            folder / "documents" / f"{name}.png"
        )
        for question, answers, kind in (
            ("What is the invoice number?", [str(number)], "form"),
            ("What is the total?", [f"${total}.00", f"{total}.00", f"${total}"], "form"),
            ("What is the date?", [f"{day} {month}", f"{month} {day}"], "layout"),
        ):
            records.append({
                "questionId": 5000 + len(records), "question": question, "image": f"documents/{name}.png",
                "docId": document, "ucsf_document_id": name, "ucsf_document_page_no": "1", "answers": answers,
                "data_split": "val", "question_types": [kind],
            })
    _write_json(folder / "val_v1.0.json",
                {"dataset_name": "docvqa", "dataset_split": "val", "dataset_version": "1.0", "data": records})


def _infographic(title: str, facts: list[tuple[str, str, int]]) -> Image.Image:
    """A tall poster: a title band, then one row per fact (a coloured disc of the fact's size, its figure and
    its label), as infographics set figures beside pictures."""
    image = Image.new("RGB", (2 * SIZE, 48 + 56 * len(facts)), (250, 247, 240))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 2 * SIZE, 36), fill=COLOURS["purple"])
    _centred_text(draw, (SIZE, 18), title, 18)
    for row, (label, colour, value) in enumerate(facts):
        top = 48 + 56 * row
        radius = 8 + value // 10
        draw.ellipse((28 - radius, top + 24 - radius, 28 + radius, top + 24 + radius), fill=COLOURS[colour])
        draw.text((60, top + 6), f"{value}%", font=_font(20), fill=(0, 0, 0))
        draw.text((60, top + 30), label, font=_font(14), fill=(60, 60, 60))
    return image


def _infovqa(folder: Path, rng: random.Random) -> None:
    """``infographicsVQA_val_v1.0_withQT.json`` with the question types of the "withQT" release (answer type,
    evidence, operation; lists, sometimes empty), images ``infographicsvqa_images/{id}.jpeg``."""
    (folder / "infographicsvqa_images").mkdir(exist_ok=True)
    topics = ("Cycling", "Reading", "Gardening", "Cooking", "Music", "Travel", "Chess", "Swimming")
    records = []
    for index, topic in enumerate(topics):
        labels = rng.sample(["adults", "children", "students", "retirees", "parents"], k=3)
        values = rng.sample(range(12, 89), k=3)
        facts = [(label, rng.choice(["red", "green", "blue", "orange"]), value) for label, value in zip(labels, values)]
        name = f"{30000 + index}.jpeg"
        _infographic(f"{topic} survey", facts).save(folder / "infographicsvqa_images" / name, quality=92)
        top = max(range(3), key=lambda row: values[row])
        for question, answers, answer_type, evidence, operation in (
            (f"What percentage of {labels[0]} enjoy {topic.lower()}?", [f"{values[0]}%", str(values[0])],
             ["single span"], ["Text"], []),
            (f"Which group enjoys {topic.lower()} the most?", [labels[top]], ["single span"], ["Visual/Layout"],
             ["Sorting"]),
            (f"What is the total of the percentages of {labels[1]} and {labels[2]}?",
             [str(values[1] + values[2])], ["non-extractive"], ["Text", "Figure"], ["Arithmetic"]),
        ):
            records.append({
                "questionId": 65000 + len(records), "question": question, "image_local_name": name,
                "ocr_output_file": name.replace(".jpeg", ".json"),
                "answers": answers, "data_split": "val", "answer_type": answer_type, "evidence": evidence,
                "operation/reasoning": operation,
            })
    _write_json(folder / "infographicsVQA_val_v1.0_withQT.json",
                {"dataset_name": "infographicVQA", "dataset_version": "1.0", "dataset_split": "val", "data": records})


def _multidocvqa(folder: Path, rng: random.Random) -> None:
    """MP-DocVQA's ``val.json``: questions over documents of two or three pages (``page_ids``, with
    ``answer_page_idx`` the page holding the answer), page images ``images/{page_id}.jpg``."""
    (folder / "images").mkdir(exist_ok=True)
    records = []
    for document in range(8):
        doc_id = f"mpdoc{document:03d}"
        number, total, day, month = rng.randint(100, 999), rng.randint(10, 99), rng.randint(1, 28), rng.choice(MONTHS)
        pages = [[f"REPORT {number}", f"Date: {day} {month}", "Page 1"],
                 ["Summary", f"Total: ${total}.00", "Page 2"],
                 ["Signed by", rng.choice(["A. Smith", "B. Jones", "C. Brown"]), "Page 3"]][: rng.choice([2, 3])]
        page_ids = [f"{doc_id}_p{page}" for page in range(len(pages))]
        for page_id, lines in zip(page_ids, pages):
            _form(lines).save(folder / "images" / f"{page_id}.jpg", quality=92)
        questions = [("What is the report number?", [str(number)], 0),
                     ("What is the date of the report?", [f"{day} {month}", f"{month} {day}"], 0),
                     ("What is the total?", [f"${total}.00", f"{total}.00"], 1)]
        if len(pages) == 3:
            questions[0] = ("Who signed the report?", [pages[2][1]], 2)
        for question, answers, page in questions:
            records.append({
                "questionId": 49000 + len(records), "question": question, "doc_id": doc_id, "page_ids": page_ids,
                "answers": answers, "answer_page_idx": page, "data_split": "val",
            })
    _write_json(folder / "val.json",
                {"dataset_name": "MP-DocVQA", "dataset_split": "val", "dataset_version": "1.0", "data": records})


def _chartqa(folder: Path, rng: random.Random) -> None:
    """``test_human.json`` and ``test_augmented.json`` (lists of ``{"imgname", "query", "label"}``) over the
    same charts in ``png/``; the human questions read one bar, the augmented ones compare bars."""
    (folder / "png").mkdir(exist_ok=True)
    human, augmented = [], []
    for chart in range(12):
        labels = rng.sample(["A", "B", "C", "D", "E"], k=4)
        values = rng.sample(range(5, 95), k=4)
        name = f"chart_{chart:03d}.png"
        _bar_chart(labels, values).save(folder / "png" / name)
        read = rng.randrange(4)
        human.append({"imgname": name, "query": f"What is the value of bar {labels[read]}?",
                      "label": str(values[read])})
        if chart % 2:
            query, label = "What is the difference between the highest and the lowest bar?", max(values) - min(values)
        else:
            query, label = "What is the sum of all the bars?", sum(values)
        augmented.append({"imgname": name, "query": query, "label": str(label)})
    _write_json(folder / "test_human.json", human)
    _write_json(folder / "test_augmented.json", augmented)


def _pope(folder: Path, rng: random.Random) -> None:
    """``coco_pope_{random,popular,adversarial}.json`` (JSON lines, as released), images in the folder itself.
    Each split asks about the objects of the same scenes, half of them there (yes) and half not (no); here the
    splits differ only in which scenes and absent objects were drawn, not in POPE's sampling strategies."""
    objects = SHAPES
    scenes = []
    for index in range(12):
        present = rng.sample(objects, k=rng.choice([1, 2]))
        shapes = [(shape, rng.choice(list(COLOURS))) for shape in present]
        name = f"scene_{index:06d}.jpg"
        _scene(shapes).save(folder / name, quality=92)
        scenes.append((name, present))
    for split in ("random", "popular", "adversarial"):
        records = []
        for index, (name, present) in enumerate(rng.sample(scenes, k=len(scenes))):
            there = index % 2 == 0
            shape = rng.choice(present) if there else rng.choice([s for s in objects if s not in present])
            records.append({"question_id": index + 1, "image": name, "text": f"Is there a {shape} in the image?",
                            "label": "yes" if there else "no"})
        _write_lines(folder / f"coco_pope_{split}.json", records)


def _multiple_choice(folder: Path, rng: random.Random) -> None:
    """``questions.jsonl`` in the plain multiple-choice format (``options`` a list, ``answer`` a letter),
    images in ``images/``; two categories, colour and shape."""
    (folder / "images").mkdir(exist_ok=True)
    records = []
    for index in range(12):
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        name = f"images/{index:03d}.png"
        _picture(shape, colour).save(folder / name)
        colours = rng.sample([c for c in COLOURS if c != colour], k=3) + [colour]
        rng.shuffle(colours)
        shapes = list(SHAPES)
        rng.shuffle(shapes)
        for category, question, options, right in (
            ("colour", "What is the colour of the shape?", colours, colour),
            ("shape", "Which shape is shown?", shapes, shape),
        ):
            records.append({"id": f"mc-{len(records):03d}", "image": name, "question": question, "options": options,
                            "answer": "ABCD"[options.index(right)], "category": category})
    _write_lines(folder / "questions.jsonl", records)


def _llava(folder: Path, rng: random.Random) -> None:
    """``questions.jsonl`` in LLaVA's question-file format (``question_id``, ``image``, ``text`` with its own
    instruction, ``category``) plus the gold ``answers``; images in ``images/``."""
    (folder / "images").mkdir(exist_ok=True)
    records = []
    for index in range(12):
        shape, colour, number = rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.randint(0, 99)
        name = f"images/{index:03d}.png"
        _picture(shape, colour, str(number)).save(folder / name)
        for category, question, answers in (
            ("number", "What number is written on the shape?", [str(number)]),
            ("colour", "What colour is the shape?", [colour]),
        ):
            records.append({"question_id": len(records), "image": name, "text": question + SHORT_ANSWER,
                            "category": category, "answers": answers})
    _write_lines(folder / "questions.jsonl", records)
