import io
import json
import os
import re

import pytest
from PIL import Image

from spark_core import schemas
from spark_core.config import ANSWER_SUFFIX, SparkConfig, load_config
from spark_core.data import READABLE_TASKS, TASKS, generate, worked_solution, write_benchmark_dataset, write_spark_dataset
from spark_core.data.synthetic import _COLOURS as COLOURS


def test_same_seed_gives_identical_rows_including_image_bytes():
    a = generate(12, seed=7)
    b = generate(12, seed=7)
    assert a == b
    assert [r["image"] for r in a] == [r["image"] for r in b]


def test_different_seed_gives_different_rows():
    a = generate(12, seed=7)
    b = generate(12, seed=8)
    assert [r["image"] for r in a] != [r["image"] for r in b]
    assert {r["prompt_id"] for r in a}.isdisjoint({r["prompt_id"] for r in b})


def test_row_i_does_not_depend_on_n():
    assert generate(3, seed=5)[2] == generate(9, seed=5)[2]


def test_rows_have_exactly_the_prompts_schema_and_build_a_table():
    rows = generate(10, seed=1, id_prefix="tr")
    for r in rows:
        assert set(r) == set(schemas.PROMPTS.names)
    t = schemas.table(rows, schemas.PROMPTS)
    assert t.num_rows == 10
    assert [r["prompt_id"] for r in rows] == [f"tr-1-{i}" for i in range(10)]
    r = rows[0]
    assert r["kind"] == "solve"
    assert r["template_id"] == r["source_prompt_id"] == r["source_rollout_id"] == ""
    msg = json.loads(r["message"])
    assert msg[0]["role"] == "user"
    assert msg[0]["content"][0]["type"] == "image"
    assert msg[0]["content"][1]["text"] == r["question"] + "\n" + ANSWER_SUFFIX
    assert ANSWER_SUFFIX not in r["question"]


def test_every_task_appears_and_answers_are_small_integers():
    rows = generate(25, seed=3)
    sources = [r["source"] for r in rows]
    assert {s.split(":", 1)[1] for s in sources} == set(READABLE_TASKS)  # the default set
    assert len(READABLE_TASKS) >= 5
    for task in READABLE_TASKS:
        assert sources.count(f"synthetic:{task}") == 5  # round-robin: equal shares
    rows += generate(20, seed=3, tasks=TASKS)
    assert {r["source"].split(":", 1)[1] for r in rows} == set(TASKS)
    for r in rows:
        assert r["answer"].isdigit(), r
        assert 1 <= int(r["answer"]) <= 20, r


def test_default_config_tasks_are_the_readable_ones():
    assert SparkConfig().data.synthetic_tasks == READABLE_TASKS
    cfg = load_config("tiny-cpu", json.dumps({"data.synthetic_tasks": ["count", "grid_area"]}))
    assert cfg.data.synthetic_tasks == ("count", "grid_area")
    assert SparkConfig.from_json(cfg.to_json()).data.synthetic_tasks == ("count", "grid_area")


def _colour_mask(r, colour):
    import numpy as np

    arr = np.asarray(Image.open(io.BytesIO(r["image"])).convert("RGB")).astype(int)
    return np.abs(arr - np.array(COLOURS[colour])).sum(-1) < 60


def test_dot_answers_match_the_pixels():
    for task in ("count_dots", "total_dots", "more_dots"):
        for r in generate(20, seed=5, tasks=(task,)):
            colours = re.findall(r"\b(red|blue|green)\b", r["question"])
            n = [len(_blobs(_colour_mask(r, c))) for c in colours]
            want = {"count_dots": lambda: n[0], "total_dots": lambda: n[0] + n[1],
                    "more_dots": lambda: n[0] - n[1]}[task]()
            assert want == int(r["answer"]), (r["question"], n)


def test_bar_height_and_grid_area_answers_match_the_pixels():
    import numpy as np

    size = 112
    for r in generate(20, seed=6, image_size=size, tasks=("bar_height",)):
        colour = re.match(r"How tall is the (\w+) bar", r["question"]).group(1)
        (area, height, width), = _blobs(_colour_mask(r, colour))
        assert round(height / (size * 0.8 / 6)) == int(r["answer"]), r["question"]
    for r in generate(20, seed=6, image_size=size, tasks=("grid_area",)):
        arr = np.asarray(Image.open(io.BytesIO(r["image"])).convert("RGB")).astype(int)
        assert len(_blobs(np.abs(arr - 255).sum(-1) > 60)) == int(r["answer"])


def test_task_subset_is_respected():
    rows = generate(6, seed=0, tasks=("count", "bar_max"))
    assert {r["source"] for r in rows} == {"synthetic:count", "synthetic:bar_max"}
    with pytest.raises(ValueError, match="unknown synthetic tasks"):
        generate(2, seed=0, tasks=("nope",))


@pytest.mark.parametrize("size", [64, 112, 160])
def test_images_are_png_of_the_requested_size(size):
    for r in generate(5, seed=2, image_size=size):
        assert r["image"][:8] == b"\x89PNG\r\n\x1a\n"
        im = Image.open(io.BytesIO(r["image"]))
        assert im.format == "PNG"
        assert im.size == (size, size)
        # high contrast: there is ink on a white page
        lo, hi = im.convert("L").getextrema()
        assert hi == 255 and lo < 100


def test_count_answer_matches_the_pixels():
    # shapes sit on a grid without overlap, so blobs of the asked colour can be counted,
    # and a square fills its bounding box while a circle fills about pi/4 of it
    import numpy as np

    colours = {"red": (220, 30, 30), "blue": (30, 70, 220), "green": (20, 150, 40)}
    for r in generate(30, seed=11, tasks=("count",)):
        colour, shape = re.match(r"How many (\w+) (circle|square)s", r["question"]).groups()
        arr = np.asarray(Image.open(io.BytesIO(r["image"])).convert("RGB")).astype(int)
        mask = np.abs(arr - np.array(colours[colour])).sum(-1) < 60
        fills = [area / (bh * bw) for area, bh, bw in _blobs(mask)]
        n = sum(1 for f in fills if (f > 0.9) == (shape == "square"))
        assert n == int(r["answer"]), (r["question"], fills)


def _blobs(mask):
    """(pixel count, bbox height, bbox width) of each 4-connected blob."""
    import numpy as np

    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    out = []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        seen[y, x] = True
        stack, pts = [(y, x)], []
        while stack:
            cy, cx = stack.pop()
            pts.append((cy, cx))
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        ys, xs = zip(*pts)
        out.append((len(pts), max(ys) - min(ys) + 1, max(xs) - min(xs) + 1))
    return out


def test_worked_solution_ends_with_one_boxed_answer():
    for r in generate(20, seed=4):
        sol = worked_solution(r)
        assert sol.endswith("\\boxed{" + r["answer"] + "}.")
        assert sol.count("\\boxed{") == 1
        assert len(sol.split()) <= 12
    r = generate(1, seed=4, tasks=("count",))[0]
    assert worked_solution(r).startswith(f"I count {r['answer']} ")
    assert worked_solution({"answer": " 42 ", "source": "mathvista"}) == "The answer is \\boxed{42}."


def test_brief_warm_start_targets_are_the_boxed_answer_and_score_as_correct():
    from spark_core.config import load_config
    from spark_core.reward import score_batch
    from spark_core.train.sft import bootstrap_examples

    rows = generate(20, seed=4)
    assert [worked_solution(r, brief=True) for r in rows] == ["\\boxed{" + r["answer"] + "}" for r in rows]
    cfg = load_config("tiny-cpu", '{"bootstrap.brief_targets": true, "bootstrap.judge_fraction": 0.5}')
    ex = bootstrap_examples(rows, cfg, 40, seed=0)
    kinds = {row["kind"] for row, _ in ex}
    assert kinds == {"solve", "pointwise", "pairwise"}
    for _, target in ex:  # only the boxed answer or verdict, nothing to pay LM-head tokens for
        assert target.startswith("\\boxed{") and target.endswith("}") and target.count("\\boxed{") == 1
    # every target is what the verifier rewards for its own row (judge verdicts included)
    scores = score_batch([t for _, t in ex], [row["answer"] for row, _ in ex])
    assert all(s["reward"] == 1.0 for s in scores), [(t, row["answer"]) for (row, t), s in zip(ex, scores)
                                                     if s["reward"] != 1.0]
    sentence = load_config("tiny-cpu", '{"bootstrap.brief_targets": false}')
    assert all(t.endswith("}.") for _, t in bootstrap_examples(rows, sentence, 40, seed=0))


def test_judge_targets_can_state_the_problems_answer_before_the_verdict():
    from spark_core.config import load_config
    from spark_core.reward import score_batch
    from spark_core.train.sft import bootstrap_examples

    rows = generate(20, seed=4)
    cfg = load_config("tiny-cpu", "", {"bootstrap.judge_fraction": 1.0, "bootstrap.judge_target": "answer_then_verdict"})
    ex = bootstrap_examples(rows, cfg, 30, seed=0)
    truth = {r["prompt_id"]: r["answer"] for r in rows}
    for row, target in ex:
        assert row["kind"] in ("pointwise", "pairwise")
        # "<the problem's answer> \\boxed{<verdict>}": one box, the verdict's
        assert target == f"{truth[row['source_prompt_id']]} \\boxed{{{row['answer']}}}"
    # the verifier reads the last box, so the target still scores as the right verdict
    assert all(s["reward"] == 1.0 for s in score_batch([t for _, t in ex], [row["answer"] for row, _ in ex]))


def test_compare_judge_targets_show_the_answers_compared():
    """compare: "<the problem's answer> | <the answer(s) shown> \\boxed{<verdict>}", with
    the shown answers the prompt's own (pointwise one, pairwise A then B)."""
    from spark_core.config import load_config
    from spark_core.reward import score_batch
    from spark_core.train.sft import bootstrap_examples

    rows = generate(30, seed=5)
    cfg = load_config("tiny-cpu", "", {"bootstrap.judge_fraction": 1.0, "bootstrap.judge_target": "compare"})
    ex = bootstrap_examples(rows, cfg, 40, seed=0)
    truth = {r["prompt_id"]: r["answer"] for r in rows}
    kinds = set()
    for row, target in ex:
        kinds.add(row["kind"])
        mine, rest = target.split(" | ")
        shown, box = rest.rsplit(" ", 1)
        assert mine == truth[row["source_prompt_id"]] and box == f"\\boxed{{{row['answer']}}}"
        if row["kind"] == "pairwise":
            a, b = shown.removeprefix("A ").split(" B ")
            assert a in row["question"] and b in row["question"]
            # the label is the letter of the shown answer equal to the truth
            assert (a, b)[row["answer"] == "B"] == mine
        else:
            assert shown in row["question"]
    assert kinds == {"pointwise", "pairwise"}
    assert all(s["reward"] == 1.0 for s in score_batch([t for _, t in ex], [row["answer"] for row, _ in ex]))


def test_write_spark_dataset_is_the_public_row_format(tmp_path):
    rows = generate(4, seed=9)
    path = write_spark_dataset(rows, str(tmp_path / "out"), max_pixels=12345)
    assert path == str(tmp_path / "out" / "train.json")
    data = json.load(open(path))
    assert len(data) == 4
    for rec, r in zip(data, rows):
        assert set(rec) == {"message", "answer"}
        assert isinstance(rec["message"], str)
        msg = json.loads(rec["message"])
        img, txt = msg[0]["content"]
        assert img["type"] == "image" and img["max_pixels"] == 12345
        assert not os.path.isabs(img["image"])
        with open(os.path.join(tmp_path, "out", img["image"]), "rb") as f:
            assert f.read() == r["image"]
        assert txt["text"].startswith(r["question"] + "\n")
        assert rec["answer"] == r["answer"]
        # the trainer's multimodal test
        assert "max_pixels" in rec["message"] and "image" in rec["message"]


def test_write_benchmark_dataset(tmp_path):
    rows = generate(3, seed=9)
    path = write_benchmark_dataset(rows, str(tmp_path), "synth_eval", absolute_paths=True)
    data = json.load(open(path))
    assert [d["dataset"] for d in data] == ["synth_eval"] * 3
    assert [d["problem"] for d in data] == [r["question"] for r in rows]
    assert [d["answer"] for d in data] == [r["answer"] for r in rows]
    for d, r in zip(data, rows):
        assert os.path.isabs(d["image_path"])
        assert open(d["image_path"], "rb").read() == r["image"]


def test_synthetic_split_is_the_configured_train_and_eval_set():
    from spark_core.config import DataConfig
    from spark_core.data.synthetic import synthetic_split

    d = DataConfig(synthetic_train=7, synthetic_eval=4, seed=99, image_size=48, synthetic_tasks=("count_dots",))
    train, evalset = synthetic_split(d, "train"), synthetic_split(d, "eval")
    assert train == generate(7, seed=99, image_size=48, tasks=("count_dots",), id_prefix="train")
    assert evalset == generate(4, seed=100, image_size=48, tasks=("count_dots",), id_prefix="eval")
    # the two splits share no picture
    assert not {r["image"] for r in train} & {r["image"] for r in evalset}
    with pytest.raises(ValueError, match="split"):
        synthetic_split(d, "test")
