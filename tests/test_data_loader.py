import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from spark_core import schemas
from spark_core.config import ANSWER_SUFFIX
from spark_core.data import (
    SPARK_SUFFIX,
    DataError,
    generate,
    load_rows,
    write_benchmark_dataset,
    write_spark_dataset,
)


def _png(colour=(255, 0, 0), size=(8, 8)):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _spark_rec(image, text, answer, **extra):
    content = ([{"type": "image", "image": image, "max_pixels": 1000}] if image is not None else []) + [
        {"type": "text", "text": text}
    ]
    return {"message": json.dumps([{"role": "user", "content": content}]), "answer": answer, **extra}


def _write_json(path, data):
    with open(path, "w") as f:
        json.dump(data, f)
    return str(path)


def _assert_same_problems(loaded, rows):
    assert [r["question"] for r in loaded] == [r["question"] for r in rows]
    assert [r["answer"] for r in loaded] == [r["answer"] for r in rows]
    assert [r["image"] for r in loaded] == [r["image"] for r in rows]


def _check_prompts_rows(loaded):
    t = schemas.table(loaded, schemas.PROMPTS)  # raises if a column is missing or mistyped
    assert t.num_rows == len(loaded)
    for r in loaded:
        assert r["kind"] == "solve"
        msg = json.loads(r["message"])
        assert msg[0]["content"][-1]["text"] == r["question"] + "\n" + ANSWER_SUFFIX
        if r["image"] is not None:
            assert msg[0]["content"][0]["type"] == "image"
            # an input's per-item pixel limit is not carried: the processor's limits apply
            assert set(msg[0]["content"][0]) == {"type", "image"}
            assert Image.open(io.BytesIO(r["image"])).format == "PNG"


# ---- round trips -------------------------------------------------------------


def test_roundtrip_spark_json(tmp_path):
    rows = generate(6, seed=1)
    path = write_spark_dataset(rows, str(tmp_path))
    loaded, quarantine = load_rows(path)
    assert quarantine == []
    _assert_same_problems(loaded, rows)
    _check_prompts_rows(loaded)
    assert [r["prompt_id"] for r in loaded] == [f"train-{i}" for i in range(6)]
    assert {r["source"] for r in loaded} == {"train"}
    assert all(SPARK_SUFFIX not in r["question"] for r in loaded)


def test_roundtrip_spark_json_with_absolute_paths_and_id_prefix(tmp_path):
    rows = generate(3, seed=2)
    path = write_spark_dataset(rows, str(tmp_path / "d"), absolute_paths=True)
    loaded, _ = load_rows(path, id_prefix="virl")
    _assert_same_problems(loaded, rows)
    assert [r["prompt_id"] for r in loaded] == ["virl-0", "virl-1", "virl-2"]


def test_roundtrip_jsonl_with_file_uri_and_message_as_list(tmp_path):
    rows = generate(4, seed=3)
    path = write_spark_dataset(rows, str(tmp_path))
    data = json.load(open(path))
    jl = tmp_path / "train.jsonl"
    with open(jl, "w") as f:
        for k, rec in enumerate(data):
            msg = json.loads(rec["message"])
            msg[0]["content"][0]["image"] = "file://" + str(tmp_path / msg[0]["content"][0]["image"])
            if k % 2:  # some producers store the message already decoded
                rec = {**rec, "message": msg}
            else:
                rec = {**rec, "message": json.dumps(msg)}
            f.write(json.dumps(rec) + "\n\n")
    loaded, quarantine = load_rows(str(jl))
    assert quarantine == []
    _assert_same_problems(loaded, rows)


def test_roundtrip_parquet_spark_format(tmp_path):
    rows = generate(5, seed=4)
    data = json.load(open(write_spark_dataset(rows, str(tmp_path))))
    p = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(data), p)
    loaded, quarantine = load_rows(str(p))
    assert quarantine == []
    _assert_same_problems(loaded, rows)


def test_roundtrip_our_prompts_parquet(tmp_path):
    rows = generate(5, seed=5)
    p = tmp_path / "prompts.parquet"
    pq.write_table(schemas.table(rows, schemas.PROMPTS), p)
    loaded, quarantine = load_rows(str(p))
    assert quarantine == []
    assert loaded == rows  # our own artifact comes back unchanged, ids and sources included


def test_roundtrip_benchmark_format(tmp_path):
    rows = generate(5, seed=6)
    path = write_benchmark_dataset(rows, str(tmp_path / "bench"), "mathvista")
    loaded, quarantine = load_rows(path)
    assert quarantine == []
    _assert_same_problems(loaded, rows)
    _check_prompts_rows(loaded)
    assert {r["source"] for r in loaded} == {"mathvista"}


def test_json_with_data_key_ids_system_turn_and_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (10, 6), (0, 200, 0)).save(buf, format="JPEG")
    (tmp_path / "a.jpg").write_bytes(buf.getvalue())
    msg = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "image", "image": "a.jpg"},
                                     {"type": "text", "text": "<image>What colour? " + SPARK_SUFFIX}]},
    ]
    path = _write_json(tmp_path / "d.json", {"data": [{"id": 17, "message": json.dumps(msg), "answer": 3}]})
    loaded, quarantine = load_rows(path)
    assert quarantine == []
    (r,) = loaded
    assert r["prompt_id"] == "17"
    assert r["question"] == "What colour?"
    assert r["answer"] == "3"
    im = Image.open(io.BytesIO(r["image"]))
    assert im.format == "PNG" and im.size == (10, 6)  # re-encoded, same picture


@pytest.mark.parametrize(
    "text",
    [
        "Q1\n" + SPARK_SUFFIX,
        "Q1 " + SPARK_SUFFIX.rstrip("."),
        "Q1\n" + SPARK_SUFFIX.replace("\\boxed", "\\\\boxed"),
        "Q1\n" + SPARK_SUFFIX.replace("'", '"'),
        "Q1\n" + ANSWER_SUFFIX,
        "  Q1  ",
    ],
)
def test_known_suffixes_are_stripped(tmp_path, text):
    (tmp_path / "i.png").write_bytes(_png())
    loaded, _ = load_rows(_write_json(tmp_path / "s.json", [_spark_rec("i.png", text, "1")]))
    assert loaded[0]["question"] == "Q1"


def test_text_only_row_is_valid(tmp_path):
    loaded, _ = load_rows(_write_json(tmp_path / "t.json", [_spark_rec(None, "2+2?", "4")]))
    assert loaded[0]["image"] is None
    content = json.loads(loaded[0]["message"])[0]["content"]
    assert [c["type"] for c in content] == ["text"]


# ---- quarantine --------------------------------------------------------------


@pytest.fixture
def mixed_file(tmp_path):
    (tmp_path / "good.png").write_bytes(_png())
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    (tmp_path / "trunc.png").write_bytes(_png(size=(64, 64))[:60])
    good = lambda i, **kw: _spark_rec("good.png", f"question {i}", str(i), id=f"r{i}", **kw)  # noqa: E731
    recs = [
        good(0),
        {"id": "no-msg", "answer": "1"},
        {"id": "empty-ans", **_spark_rec("good.png", "q", "   ")},
        {"id": "no-ans", "message": _spark_rec("good.png", "q", "1")["message"]},
        _spark_rec("missing.png", "q", "1", id="missing-img"),
        _spark_rec("bad.png", "q", "1", id="corrupt-img"),
        _spark_rec("trunc.png", "q", "1", id="trunc-img"),
        {"id": "bad-json", "message": "[{\"role\": \"user\", ", "answer": "1"},
        good(1),
        {**good(2), "id": "r0"},
        _spark_rec("good.png", "word " * 50, "1", id="too-long"),
        {"id": "bench-empty", "dataset": "x", "problem": "", "answer": "1", "image_path": "good.png"},
        {"id": "bench-missing", "dataset": "x", "problem": "p", "answer": "1", "image_path": "nope/x.png"},
        {"dataset": "x", "problem": "p", "answer": "5", "image_path": "good.png"},
    ]
    return _write_json(tmp_path / "mixed.json", recs)


EXPECTED = {
    "no-msg": "message",
    "empty-ans": "answer",
    "no-ans": "answer",
    "missing-img": "image",
    "corrupt-img": "image",
    "trunc-img": "image",
    "bad-json": "message",
    "r0": "prompt_id",
    "too-long": "message",
    "bench-empty": "problem",
    "bench-missing": "image_path",
}


def test_each_bad_row_is_quarantined_and_good_rows_survive(mixed_file):
    loaded, quarantine = load_rows(mixed_file, count_tokens=lambda s: len(s.split()), max_prompt_tokens=30)
    assert [r["prompt_id"] for r in loaded] == ["r0", "r1", "mixed-13"]
    assert [r["answer"] for r in loaded] == ["0", "1", "5"]
    assert loaded[0]["question"] == "question 0"  # the first r0 is kept, not the duplicate
    assert loaded[2]["source"] == "x"
    assert {q["row_id"]: q["field"] for q in quarantine} == EXPECTED
    schemas.table(quarantine, schemas.QUARANTINE)
    by_id = {q["row_id"]: q for q in quarantine}
    for rid, q in by_id.items():
        assert repr(rid) in q["reason"], q  # the reason names the row
    assert by_id["r0"]["row_index"] == 9
    assert "duplicate" in by_id["r0"]["reason"]
    assert "missing.png" in by_id["missing-img"]["reason"] and "does not exist" in by_id["missing-img"]["reason"]
    assert "cannot be decoded" in by_id["corrupt-img"]["reason"]
    assert "not valid JSON" in by_id["bad-json"]["reason"]
    assert "empty answer" in by_id["empty-ans"]["reason"]
    assert "tokens" in by_id["too-long"]["reason"] and "30" in by_id["too-long"]["reason"]
    assert json.loads(by_id["no-msg"]["raw"]) == {"id": "no-msg", "answer": "1"}


def test_without_token_counter_long_prompts_are_kept(mixed_file):
    loaded, quarantine = load_rows(mixed_file)
    assert "too-long" in [r["prompt_id"] for r in loaded]
    assert "too-long" not in {q["row_id"] for q in quarantine}


def test_quarantine_raw_replaces_image_bytes_and_is_truncated(tmp_path):
    rows = generate(3, seed=0)
    rows[1] = {**rows[1], "answer": ""}
    rows[2] = {**rows[2], "answer": " ", "question": "x" * 5000}
    p = tmp_path / "p.parquet"
    pq.write_table(schemas.table(rows, schemas.PROMPTS), p)
    loaded, quarantine = load_rows(str(p))
    assert [r["prompt_id"] for r in loaded] == [rows[0]["prompt_id"]]
    q1, q2 = quarantine
    assert q1["row_id"] == rows[1]["prompt_id"] and q1["field"] == "answer"
    raw = json.loads(q1["raw"])
    assert raw["image"] == f"<{len(rows[1]['image'])} bytes>"
    assert raw["question"] == rows[1]["question"]
    assert len(q2["raw"]) == 2000


def test_bad_jsonl_line_is_quarantined(tmp_path):
    (tmp_path / "i.png").write_bytes(_png())
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(_spark_rec("i.png", "q", "2")) + "\n{not json\n")
    loaded, quarantine = load_rows(str(p))
    assert [r["answer"] for r in loaded] == ["2"]
    assert quarantine[0]["row_id"] == "d-1" and quarantine[0]["field"] == "json"
    assert "line 2" in quarantine[0]["reason"]


def test_zero_valid_rows_raises_with_reasons(tmp_path):
    path = _write_json(tmp_path / "bad.json", [{"id": "a", "answer": ""}, {"id": "b", "answer": "1"}])
    with pytest.raises(DataError, match="all 2 rows were quarantined") as e:
        load_rows(path)
    assert "'a'" in str(e.value) and "'b'" in str(e.value)
    assert isinstance(e.value, ValueError)


def test_empty_file_raises(tmp_path):
    with pytest.raises(DataError, match="no rows"):
        load_rows(_write_json(tmp_path / "e.json", []))


# ---- unreadable files --------------------------------------------------------


def test_corrupt_parquet_raises_naming_path(tmp_path):
    p = tmp_path / "broken.parquet"
    p.write_bytes(b"PAR1 definitely not parquet")
    with pytest.raises(DataError) as e:
        load_rows(str(p))
    assert str(p) in str(e.value)


def test_invalid_json_raises_naming_path(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text('[{"message": ')
    with pytest.raises(DataError, match="not valid JSON") as e:
        load_rows(str(p))
    assert str(p) in str(e.value)


def test_missing_file_and_unsupported_extension_raise(tmp_path):
    with pytest.raises(DataError, match="does not exist") as e:
        load_rows(str(tmp_path / "nope.json"))
    assert str(tmp_path / "nope.json") in str(e.value)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported"):
        load_rows(str(tmp_path / "x.csv"))


def test_json_object_without_data_list_raises(tmp_path):
    with pytest.raises(DataError, match="JSON list"):
        load_rows(_write_json(tmp_path / "o.json", {"rows": []}))


def test_jsonl_content_in_a_json_file_is_accepted(tmp_path):
    (tmp_path / "i.png").write_bytes(_png())
    p = tmp_path / "lines.json"
    p.write_text("\n".join(json.dumps(_spark_rec("i.png", f"q{i}", str(i))) for i in range(3)))
    loaded, _ = load_rows(str(p))
    assert [r["answer"] for r in loaded] == ["0", "1", "2"]


# ---- ViRL39K, as its users have it -------------------------------------------


def _virl_release(tmp_path, rows):
    """A file shaped like TIGER-Lab/ViRL39K's 39Krelease.parquet: images beside it, paths relative."""
    (tmp_path / "images").mkdir(exist_ok=True)
    recs = []
    for i, (question, answer, colours) in enumerate(rows):
        paths = []
        for k, c in enumerate(colours):
            name = f"images/q{i}-{k}.jpg" if k % 2 else f"images/q{i}-{k}.png"
            Image.new("RGB", (20 + i, 10), c).save(tmp_path / name)
            paths.append(name)
        recs.append({"question": question, "answer": answer, "PassRate_32BTrained": 0.5,
                     "PassRate_7BTrained": 0.25, "category": "(GradeSchool) Geometric", "source": "MMK12",
                     "qid": f"MMK12-{i:04d}", "image": paths})
    schema = pa.schema([("question", pa.string()), ("answer", pa.string()), ("PassRate_32BTrained", pa.float64()),
                        ("PassRate_7BTrained", pa.float64()), ("category", pa.string()), ("source", pa.string()),
                        ("qid", pa.string()), ("image", pa.list_(pa.string()))])
    p = tmp_path / "39Krelease.parquet"
    pq.write_table(pa.Table.from_pylist(recs, schema=schema), p)
    return str(p)


def test_virl39k_release_parquet_loads(tmp_path):
    path = _virl_release(tmp_path, [
        ("<image>\nWhat is the value of x in the triangle shown above?", "\\boxed{60}", [(255, 0, 0)]),
        ("<image>Which bar is tallest? Choices: A. red B. blue", "\\boxed{\\frac{1}{2}}", [(0, 0, 255)]),
        ("<image>\nHow many circles?", "3", [(0, 255, 0)]),
        ("If 2x = 10, what is x?", "\\boxed{5}", []),
    ])
    loaded, quarantine = load_rows(path)
    assert quarantine == []
    assert [r["prompt_id"] for r in loaded] == ["MMK12-0000", "MMK12-0001", "MMK12-0002", "MMK12-0003"]
    assert [r["answer"] for r in loaded] == ["60", "\\frac{1}{2}", "3", "5"]  # boxes unwrapped for the label
    assert loaded[0]["question"] == "What is the value of x in the triangle shown above?"
    assert loaded[1]["question"] == "Which bar is tallest? Choices: A. red B. blue"
    assert all("<image>" not in r["question"] for r in loaded)
    assert {r["source"] for r in loaded} == {"MMK12"}
    for r, colour in zip(loaded[:3], [(255, 0, 0), (0, 0, 255), (0, 255, 0)]):
        im = Image.open(io.BytesIO(r["image"]))
        assert im.format == "PNG" and im.convert("RGB").getpixel((0, 0)) == colour
    assert loaded[3]["image"] is None
    _check_prompts_rows(loaded)


def test_virl39k_release_bad_rows_are_quarantined(tmp_path):
    path = _virl_release(tmp_path, [
        ("<image>\nok?", "\\boxed{1}", [(1, 2, 3)]),
        ("<image>\n<image>\ntwo images?", "\\boxed{2}", [(1, 2, 3), (4, 5, 6)]),
        ("<image>\nno image?", "\\boxed{3}", []),
        ("<image>\nempty box", "\\boxed{ }", [(1, 2, 3)]),
    ])
    t = pq.read_table(path).to_pylist()
    t.append({**t[0], "qid": "missing", "image": ["images/nope.png"]})
    pq.write_table(pa.Table.from_pylist(t), path)
    loaded, quarantine = load_rows(path)
    assert [r["prompt_id"] for r in loaded] == ["MMK12-0000"]
    by_id = {q["row_id"]: q for q in quarantine}
    assert by_id["MMK12-0001"]["field"] == "image" and "2 images" in by_id["MMK12-0001"]["reason"]
    assert by_id["MMK12-0002"]["field"] == "question" and "no image" in by_id["MMK12-0002"]["reason"]
    assert by_id["MMK12-0003"]["field"] == "answer" and "empty" in by_id["MMK12-0003"]["reason"]
    assert by_id["missing"]["field"] == "image" and "does not exist" in by_id["missing"]["reason"]
    assert json.loads(by_id["MMK12-0001"]["raw"])["image"] == ["images/q1-0.png", "images/q1-1.jpg"]


def _virl_hub(tmp_path, rows, name="train-00000-of-00001.parquet"):
    """A file shaped like the Hub's Parquet conversion: `problem`, embedded `images` structs."""
    recs = []
    for i, (problem, answer, colours) in enumerate(rows):
        images = []
        for k, c in enumerate(colours):
            buf = io.BytesIO()
            Image.new("RGB", (12, 9 + k), c).save(buf, format="JPEG" if k % 2 else "PNG")
            images.append({"bytes": buf.getvalue(), "path": f"q{i}-{k}.png"})
        recs.append({"answer": answer, "category": "(GradeSchool) Science", "qid": f"hub-{i}", "images": images,
                     "problem": problem, "id": i})
    schema = pa.schema([("answer", pa.string()), ("category", pa.string()), ("qid", pa.string()),
                        ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
                        ("problem", pa.string()), ("id", pa.int64())])
    p = tmp_path / name
    pq.write_table(pa.Table.from_pylist(recs, schema=schema), p)
    return str(p)


def test_virl39k_hub_parquet_loads(tmp_path):
    path = _virl_hub(tmp_path, [
        ("<image>What is the area of the rectangle?", "\\boxed{12}", [(10, 20, 30)]),
        ("<image>\nWhich planet is shown?", "Mars", [(200, 50, 0)]),
        ("What is 7 * 6?", "42", []),
    ])
    loaded, quarantine = load_rows(path)
    assert quarantine == []
    assert [r["prompt_id"] for r in loaded] == ["hub-0", "hub-1", "hub-2"]
    assert [r["answer"] for r in loaded] == ["12", "Mars", "42"]
    assert [r["question"] for r in loaded] == ["What is the area of the rectangle?", "Which planet is shown?",
                                               "What is 7 * 6?"]
    assert {r["source"] for r in loaded} == {"(GradeSchool) Science"}
    for r, colour in zip(loaded[:2], [(10, 20, 30), (200, 50, 0)]):
        assert Image.open(io.BytesIO(r["image"])).convert("RGB").getpixel((0, 0)) == colour
    assert loaded[2]["image"] is None
    _check_prompts_rows(loaded)


def test_virl39k_hub_bad_rows_are_quarantined(tmp_path):
    path = _virl_hub(tmp_path, [
        ("<image>fine", "1", [(1, 1, 1)]),
        ("<image>two", "2", [(1, 1, 1), (2, 2, 2)]),
        ("", "3", [(1, 1, 1)]),
        ("<image>no answer", "", [(1, 1, 1)]),
    ])
    t = pq.read_table(path).to_pylist()
    t.append({**t[0], "qid": "broken", "images": [{"bytes": b"\x89PNG not an image", "path": "x.png"}]})
    pq.write_table(pa.Table.from_pylist(t), path)
    loaded, quarantine = load_rows(path)
    assert [r["prompt_id"] for r in loaded] == ["hub-0"]
    assert {q["row_id"]: q["field"] for q in quarantine} == {
        "hub-1": "images", "hub-2": "problem", "hub-3": "answer", "broken": "images"}
    broken = next(q for q in quarantine if q["row_id"] == "broken")
    assert "cannot be decoded" in broken["reason"]
    assert json.loads(broken["raw"])["images"][0]["bytes"].endswith("bytes>")


@pytest.mark.parametrize("answer, label", [
    ("\\boxed{60}", "60"), (" \\boxed{\\frac{1}{2}} ", "\\frac{1}{2}"), ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
    ("\\boxed{1} or \\boxed{2}", "\\boxed{1} or \\boxed{2}"), ("\\boxed{a\\}", "\\boxed{a\\}"), ("B", "B"),
])
def test_boxed_answers_are_unwrapped_only_when_whole(tmp_path, answer, label):
    (tmp_path / "i.png").write_bytes(_png())
    loaded, _ = load_rows(_write_json(tmp_path / "b.json", [_spark_rec("i.png", "q", answer)]))
    assert loaded[0]["answer"] == label
