"""Synthetic visual-math problems drawn with PIL, deterministic by seed.

Every answer is a small integer that can be read off the picture, and the verifier
checks it exactly. Two families:

- READABLE_TASKS (the default): counts, sums, differences, heights and areas of
  equal-sized coloured marks on a white ground. The answer is an amount of one colour,
  which a randomly initialised 4-block vision tower learns to read within a few hundred
  warm-start steps on CPU, so RL starts from a model that is right part of the time.
- PRINTED_TASKS: the answer is written as digits in the picture (read a digit, add two
  digits, read the tallest bar's label). The tiny model does not learn to read glyphs
  in a CPU budget (its accuracy stays at chance), so these are for larger models.
"""

from __future__ import annotations

import functools
import io
import json
import os
import random
import re
from typing import Any, Callable

from PIL import Image, ImageDraw, ImageFont

from spark_core import schemas
from spark_core.config import ANSWER_SUFFIX, ModelConfig
from spark_core.data.loader import SPARK_SUFFIX

READABLE_TASKS = ("count_dots", "total_dots", "more_dots", "bar_height", "grid_area")
PRINTED_TASKS = ("count", "read_number", "bar_max", "rect_area", "add_shown")
TASKS = READABLE_TASKS + PRINTED_TASKS

_COLOURS = {
    "red": (220, 30, 30),
    "blue": (30, 70, 220),
    "green": (20, 150, 40),
}
_INK = [(0, 0, 0), (200, 20, 20), (20, 50, 200), (10, 120, 30)]
_WHITE = (255, 255, 255)


# ---- drawing helpers -----------------------------------------------------


@functools.lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont | None:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError, AttributeError):
        # Pillow without FreeType: caller scales the bitmap font instead
        return None


def _text(img: Image.Image, center: tuple[float, float], text: str, size: int, fill: tuple[int, int, int]) -> None:
    """Draw `text` centred on `center`, about `size` px tall."""
    size = max(8, int(size))
    font = _font(size)
    if font is not None:
        ImageDraw.Draw(img).text(center, text, font=font, fill=fill, anchor="mm")
        return
    base = ImageFont.load_default()
    left, top, right, bottom = ImageDraw.Draw(img).textbbox((0, 0), text, font=base)
    w, h = max(1, right - left), max(1, bottom - top)
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).text((-left, -top), text, font=base, fill=255)
    scale = size / h
    mask = mask.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.NEAREST)
    x = round(center[0] - mask.width / 2)
    y = round(center[1] - mask.height / 2)
    img.paste(Image.new("RGB", mask.size, fill), (x, y), mask)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, colour) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    else:
        draw.rectangle(box, fill=colour)


# ---- tasks: each returns (question, answer, image) ------------------------


def _count(rng: random.Random, s: int) -> tuple[str, str, Image.Image]:
    img = Image.new("RGB", (s, s), _WHITE)
    draw = ImageDraw.Draw(img)
    colour = rng.choice(sorted(_COLOURS))
    shape = rng.choice(["circle", "square"])
    n_target = rng.randint(1, 5)
    n_distract = rng.randint(0, 3)
    # distractors differ in colour, so the count is the number of blobs of one colour
    others = [(c, sh) for c in sorted(_COLOURS) for sh in ("circle", "square") if c != colour]
    grid = 4  # 16 cells; shapes never overlap
    cells = rng.sample(range(grid * grid), n_target + n_distract)
    cell = s / grid
    for k, idx in enumerate(cells):
        c, sh = (colour, shape) if k < n_target else rng.choice(others)
        cx = (idx % grid + 0.5) * cell + rng.uniform(-0.08, 0.08) * cell
        cy = (idx // grid + 0.5) * cell + rng.uniform(-0.08, 0.08) * cell
        _shape(draw, sh, cx, cy, cell * rng.uniform(0.28, 0.36), _COLOURS[c])
    return f"How many {colour} {shape}s are in the image?", str(n_target), img


def _read_number(rng: random.Random, s: int) -> tuple[str, str, Image.Image]:
    img = Image.new("RGB", (s, s), _WHITE)
    value = rng.randint(1, 9)  # one large digit
    cx = s / 2 + rng.uniform(-0.1, 0.1) * s
    cy = s / 2 + rng.uniform(-0.1, 0.1) * s
    _text(img, (cx, cy), str(value), int(s * rng.uniform(0.55, 0.7)), rng.choice(_INK))
    return "What number is shown in the image?", str(value), img


def _bar_max(rng: random.Random, s: int) -> tuple[str, str, Image.Image]:
    img = Image.new("RGB", (s, s), _WHITE)
    draw = ImageDraw.Draw(img)
    k = rng.randint(3, 4)
    top = rng.randint(4, 9)
    values = [top] + [rng.randint(1, top - 1) for _ in range(k - 1)]  # a unique tallest bar
    rng.shuffle(values)
    base_y = s * 0.82
    top_y = s * 0.2  # room for the value written above the tallest bar
    unit = (base_y - top_y) / 9
    slot = s * 0.9 / k
    font_px = int(s * 0.14)
    colour = rng.choice(list(_COLOURS.values()))
    for j, v in enumerate(values):
        x0 = s * 0.05 + j * slot + slot * 0.18
        x1 = x0 + slot * 0.64
        y0 = base_y - v * unit
        draw.rectangle((x0, y0, x1, base_y), fill=colour)
        _text(img, ((x0 + x1) / 2, y0 - font_px * 0.6), str(v), font_px, (0, 0, 0))
        _text(img, ((x0 + x1) / 2, base_y + font_px * 0.7), "ABCD"[j], font_px, (0, 0, 0))
    draw.line((s * 0.03, base_y, s * 0.97, base_y), fill=(0, 0, 0), width=max(1, s // 56))
    return "What is the value of the tallest bar?", str(top), img


def _rect_area(rng: random.Random, s: int) -> tuple[str, str, Image.Image]:
    img = Image.new("RGB", (s, s), _WHITE)
    draw = ImageDraw.Draw(img)
    w, h = rng.randint(1, 4), rng.randint(1, 3)
    unit = s * 0.6 / 5
    x0 = s * 0.3 + rng.uniform(-0.03, 0.03) * s
    y0 = s * 0.3 + rng.uniform(-0.03, 0.03) * s
    x1, y1 = x0 + w * unit, y0 + h * unit
    colour = rng.choice(list(_COLOURS.values()))
    draw.rectangle((x0, y0, x1, y1), fill=tuple(255 - (255 - c) // 4 for c in colour), outline=colour,
                   width=max(2, s // 40))
    font_px = int(s * 0.18)
    _text(img, ((x0 + x1) / 2, y0 - font_px * 0.7), str(w), font_px, (0, 0, 0))
    _text(img, (x0 - font_px * 0.6, (y0 + y1) / 2), str(h), font_px, (0, 0, 0))
    return "What is the area of the rectangle?", str(w * h), img


def _add_shown(rng: random.Random, s: int) -> tuple[str, str, Image.Image]:
    img = Image.new("RGB", (s, s), _WHITE)
    a, b = rng.randint(1, 5), rng.randint(1, 5)
    ink = rng.sample(_INK, 2)
    font_px = int(s * 0.42)
    _text(img, (s * 0.27, s * rng.uniform(0.35, 0.65)), str(a), font_px, ink[0])
    _text(img, (s * 0.73, s * rng.uniform(0.35, 0.65)), str(b), font_px, ink[1])
    return "What is the sum of the two numbers shown?", str(a + b), img


# ---- colour-amount tasks (READABLE_TASKS) ----------------------------------


def _dots(rng: random.Random, s: int, counts: dict[str, int]) -> Image.Image:
    """Equal dots on a 4x4 grid, one per cell, so a count is an amount of one colour."""
    img = Image.new("RGB", (s, s), _WHITE)
    draw = ImageDraw.Draw(img)
    grid = 4
    cell = s / grid
    items = [c for c in sorted(counts) for _ in range(counts[c])]
    for c, idx in zip(items, rng.sample(range(grid * grid), len(items))):
        _shape(draw, "circle", (idx % grid + 0.5) * cell, (idx // grid + 0.5) * cell, cell * 0.36, _COLOURS[c])
    return img


def _count_dots(rng: random.Random, s: int) -> tuple[str, str, Image.Image]:
    colour = rng.choice(sorted(_COLOURS))
    counts = {c: rng.randint(0, 2) for c in sorted(_COLOURS) if c != colour}
    counts[colour] = rng.randint(1, 5)
    return f"How many {colour} dots are there?", str(counts[colour]), _dots(rng, s, counts)


def _total_dots(rng: random.Random, s: int) -> tuple[str, str, Image.Image]:
    a, b = rng.sample(sorted(_COLOURS), 2)
    counts = {a: rng.randint(1, 4), b: rng.randint(1, 4)}
    return f"How many {a} and {b} dots are there in total?", str(counts[a] + counts[b]), _dots(rng, s, counts)


def _more_dots(rng: random.Random, s: int) -> tuple[str, str, Image.Image]:
    a, b = rng.sample(sorted(_COLOURS), 2)
    nb = rng.randint(1, 3)
    counts = {a: nb + rng.randint(1, 4), b: nb}
    return f"How many more {a} dots than {b} dots are there?", str(counts[a] - nb), _dots(rng, s, counts)


def _bar_height(rng: random.Random, s: int) -> tuple[str, str, Image.Image]:
    img = Image.new("RGB", (s, s), _WHITE)
    draw = ImageDraw.Draw(img)
    colours = sorted(_COLOURS)
    rng.shuffle(colours)
    heights = [rng.randint(1, 6) for _ in colours]
    base, unit, slot = s * 0.9, s * 0.8 / 6, s / len(colours)
    for j, (c, h) in enumerate(zip(colours, heights)):
        x0 = j * slot + slot * 0.15
        draw.rectangle((x0, base - h * unit, x0 + slot * 0.7, base), fill=_COLOURS[c])
    k = rng.randrange(len(colours))
    return f"How tall is the {colours[k]} bar, in units?", str(heights[k]), img


def _grid_area(rng: random.Random, s: int) -> tuple[str, str, Image.Image]:
    img = Image.new("RGB", (s, s), _WHITE)
    draw = ImageDraw.Draw(img)
    w, h = rng.randint(1, 4), rng.randint(1, 3)
    unit = s / 5
    colour = _COLOURS[rng.choice(sorted(_COLOURS))]
    x0, y0 = (s - w * unit) / 2, (s - h * unit) / 2
    for i in range(w):  # unit squares with a white gap, so the area can be counted
        for j in range(h):
            draw.rectangle((x0 + i * unit + 1, y0 + j * unit + 1, x0 + (i + 1) * unit - 2, y0 + (j + 1) * unit - 2),
                           fill=colour)
    return "What is the area of the rectangle in unit squares?", str(w * h), img


_MAKERS: dict[str, Callable[[random.Random, int], tuple[str, str, Image.Image]]] = {
    "count": _count,
    "read_number": _read_number,
    "bar_max": _bar_max,
    "rect_area": _rect_area,
    "add_shown": _add_shown,
    "count_dots": _count_dots,
    "total_dots": _total_dots,
    "more_dots": _more_dots,
    "bar_height": _bar_height,
    "grid_area": _grid_area,
}


# ---- public API -----------------------------------------------------------


def generate(
    n: int,
    seed: int,
    image_size: int = 112,
    tasks: tuple[str, ...] | None = None,
    id_prefix: str = "syn",
) -> list[dict[str, Any]]:
    """`n` PROMPTS rows; the same (n, seed, image_size, tasks) always gives identical rows."""
    tasks = tuple(tasks) if tasks else READABLE_TASKS
    unknown = [t for t in tasks if t not in _MAKERS]
    if unknown:
        raise ValueError(f"unknown synthetic tasks {unknown}; choose from {TASKS}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 px, got {image_size}")
    # round-robin from a seeded offset, so every task appears once n >= len(tasks)
    offset = random.Random(f"spark-synthetic-order-{seed}").randrange(len(tasks))
    rows = []
    for i in range(n):
        task = tasks[(offset + i) % len(tasks)]
        rng = random.Random(f"spark-synthetic-{seed}-{i}")  # per-row stream: row i does not depend on n
        question, answer, img = _MAKERS[task](rng, image_size)
        rows.append(
            {
                "prompt_id": f"{id_prefix}-{seed}-{i}",
                "kind": schemas.KIND_SOLVE,
                "message": schemas.message_json(question + "\n" + ANSWER_SUFFIX, has_image=True),
                "question": question,
                "answer": answer,
                "image": _png(img),
                "source": f"synthetic:{task}",
                "template_id": "",
                "source_prompt_id": "",
                "source_rollout_id": "",
            }
        )
    return rows


_SOLUTIONS = {
    "count_dots": "I count {a} of them.",
    "total_dots": "Together there are {a}.",
    "more_dots": "The difference is {a}.",
    "bar_height": "The bar is {a} units tall.",
    "grid_area": "It covers {a} unit squares.",
    "read_number": "The number shown is {a}.",
    "bar_max": "The tallest bar is {a}.",
    "rect_area": "Width times height is {a}.",
    "add_shown": "The two numbers add up to {a}.",
}


def worked_solution(row: dict[str, Any], brief: bool = False) -> str:
    """A one-sentence solution ending in exactly one \\boxed{answer} (bootstrap target).

    brief: only the boxed answer. Every response token costs a 152k-way LM head on
    the tiny model, so the short form makes warm start, rollouts and updates cheaper
    and puts the answer tokens' share of the token-mean loss up.
    """
    answer = str(row["answer"]).strip()
    if brief:
        return f"\\boxed{{{answer}}}"
    source = str(row.get("source") or "")
    task = source.split(":", 1)[1] if source.startswith("synthetic:") else ""
    if task == "count":
        m = re.match(r"How many (.+?) are", str(row.get("question") or ""))
        what = m.group(1) if m else "of them"
        sentence = f"I count {answer} {what}."
    elif task in _SOLUTIONS:
        sentence = _SOLUTIONS[task].format(a=answer)
    else:
        return f"The answer is \\boxed{{{answer}}}."
    return f"{sentence} The answer is \\boxed{{{answer}}}."


def _image_name(i: int, prompt_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", prompt_id)[:80]
    return f"{i:06d}-{safe}.png"


def _save_images(rows: list[dict[str, Any]], out_dir: str, absolute_paths: bool) -> list[str | None]:
    img_dir = os.path.join(out_dir, "images")
    os.makedirs(img_dir, exist_ok=True)
    paths: list[str | None] = []
    for i, r in enumerate(rows):
        if not r.get("image"):
            paths.append(None)
            continue
        name = _image_name(i, str(r.get("prompt_id", i)))
        full = os.path.join(img_dir, name)
        with open(full, "wb") as f:
            f.write(r["image"])
        paths.append(os.path.abspath(full) if absolute_paths else f"images/{name}")
    return paths


def write_spark_dataset(
    rows: list[dict[str, Any]],
    out_dir: str,
    *,
    max_pixels: int | None = None,
    absolute_paths: bool = False,
    suffix: str = SPARK_SUFFIX,
) -> str:
    """Write rows as a public SPARK/ViRL39K training file (`out_dir/train.json`); return its path.

    Its image items carry `max_pixels` as the released files do, for trainers that read
    it; this project's loader ignores it (the processor's limits apply everywhere)."""
    max_pixels = max_pixels or ModelConfig().max_pixels
    os.makedirs(out_dir, exist_ok=True)
    paths = _save_images(rows, out_dir, absolute_paths)
    records = []
    for r, path in zip(rows, paths):
        content: list[dict[str, Any]] = []
        if path is not None:
            content.append({"type": "image", "image": path, "max_pixels": max_pixels})
        content.append({"type": "text", "text": f"{r['question']}\n{suffix}" if suffix else r["question"]})
        records.append({"message": json.dumps([{"role": "user", "content": content}], ensure_ascii=False),
                        "answer": r["answer"]})
    out = os.path.join(out_dir, "train.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(records, f, ensure_ascii=False, indent=1)
    return out


def write_benchmark_dataset(
    rows: list[dict[str, Any]],
    out_dir: str,
    dataset_name: str,
    *,
    absolute_paths: bool = False,
) -> str:
    """Write rows in the evaluation format ({dataset, problem, answer, image_path}); return the path."""
    os.makedirs(out_dir, exist_ok=True)
    paths = _save_images(rows, out_dir, absolute_paths)
    records = [
        {"dataset": dataset_name, "problem": r["question"], "answer": r["answer"], "image_path": path or ""}
        for r, path in zip(rows, paths)
    ]
    out = os.path.join(out_dir, re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset_name) + ".json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(records, f, ensure_ascii=False, indent=1)
    return out


SPLITS = {"train": 0, "eval": 1}  # seed offset of each split from data.seed


def synthetic_split(d, split: str) -> list[dict[str, Any]]:
    """The synthetic train or eval set a DataConfig `d` describes (the one place that
    says how the splits differ: eval uses data.seed + 1 and ids "eval-...")."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    n = d.synthetic_train if split == "train" else d.synthetic_eval
    return generate(n, seed=d.seed + SPLITS[split], image_size=d.image_size, tasks=d.synthetic_tasks, id_prefix=split)
