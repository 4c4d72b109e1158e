"""Recycling rollouts into judge and reflection prompts."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from spark_core import schemas
from spark_core.config import ANSWER_SUFFIX, RecycleConfig
from spark_core.recycle import (
    ALL_TEMPLATES,
    PAIRWISE,
    POINTWISE_AB,
    POINTWISE_YN,
    REFLECTION_ANS,
    REFLECTION_COT,
    TEMPLATES_BY_ID,
    fill,
    recycle,
)
from spark_core.data import generate
from spark_core.reward import verify

PNG = b"\x89PNG\r\n\x1a\nfake-image-bytes"
OPPOSITE = {"Yes": "No", "No": "Yes", "A": "B", "B": "A"}


def prompt(pid: str, answer: str, image: bytes | None = PNG, question: str | None = None) -> dict:
    q = question if question is not None else f"What is the value for {pid}?"
    return {
        "prompt_id": pid,
        "kind": schemas.KIND_SOLVE,
        "message": schemas.message_json(q + "\n" + ANSWER_SUFFIX, has_image=image is not None),
        "question": q,
        "answer": answer,
        "image": image,
        "source": "synthetic-test",
        "template_id": "",
        "source_prompt_id": "",
        "source_rollout_id": "",
    }


def rollouts(pid: str, outcomes: list[tuple[float, str | None]], answer: str = "") -> list[dict]:
    """outcomes: (reward, extracted) per sample; the response embeds the extracted answer."""
    rows = []
    for i, (reward, extracted) in enumerate(outcomes):
        body = f"reasoning {pid} #{i}. "
        response = body + (f"\\boxed{{{extracted}}}" if extracted is not None else "no final answer")
        rows.append({
            "prompt_id": pid,
            "rollout_id": f"{pid}-r{i}",
            "kind": schemas.KIND_SOLVE,
            "sample_index": i,
            "answer": answer,
            "response": response,
            "prompt_token_ids": [1, 2],
            "response_token_ids": [3],
            "old_logprobs": [-0.5],
            "finish_reason": "stop",
            "reward": reward,
            "extracted": extracted,
            "verify_status": "ok" if reward else ("wrong" if extracted is not None else "no_boxed"),
            "verify_ms": 1.0,
        })
    return rows


def mixed_group(pid: str, answer: str, g: int, n_right: int) -> list[dict]:
    outs = [(1.0, answer)] * n_right + [(0.0, str(100 + i)) for i in range(g - n_right)]
    return rollouts(pid, outs, answer)


def cfg(**kw) -> RecycleConfig:
    """Per-group recycling as published; the tests of `mixed_groups_only` turn it on."""
    kw.setdefault("mixed_groups_only", False)
    return RecycleConfig(**kw)


def shows_correct(row: dict) -> bool:
    """Whether a pointwise judge row shows a correct answer (its label is its template's
    verdict for a correct one)."""
    return row["answer"] == TEMPLATES_BY_ID[row["template_id"]].correct_label


def judge_rows(rows):
    return [r for r in rows if r["kind"] in (schemas.KIND_POINTWISE, schemas.KIND_PAIRWISE)]


def refl_rows(rows):
    return [r for r in rows if r["kind"] == schemas.KIND_REFLECTION]


def by_rollout(scored):
    return {r["rollout_id"]: r for r in scored}


# ---- templates -----------------------------------------------------------------------


def test_template_counts_and_ids():
    for group in (POINTWISE_YN, POINTWISE_AB, PAIRWISE, REFLECTION_COT, REFLECTION_ANS):
        assert len(group) >= 10
    ids = [t.id for t in ALL_TEMPLATES]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)+", i) for i in ids)
    assert POINTWISE_YN[2].id == "pw-yn-03"


def test_templates_ask_for_boxed():
    for t in ALL_TEMPLATES:
        assert "\\boxed{}" in t.text, t.id
        assert "\\box{" not in t.text, t.id


def test_template_placeholders():
    for t in POINTWISE_YN + POINTWISE_AB:
        assert set(t.fields) == {"question", "answer"}, t.id
        assert (t.correct_label, t.wrong_label) in (("Yes", "No"), ("A", "B"))
    for t in POINTWISE_AB:
        # the prompt itself says what each letter means
        assert re.search(r"\bA\b", t.text) and re.search(r"\bB\b", t.text), t.id
        assert re.search(r"correct|right", t.text) and re.search(r"incorrect|wrong|not", t.text), t.id
    for t in PAIRWISE:
        assert set(t.fields) == {"question", "answer_a", "answer_b"}, t.id
    for t in REFLECTION_COT:
        assert set(t.fields) == {"question", "solution"}, t.id
    for t in REFLECTION_ANS:
        assert set(t.fields) == {"question", "answer"}, t.id
    for group in (REFLECTION_COT, REFLECTION_ANS):
        flags = {t.asserts_wrong for t in group}
        assert flags == {True, False}


def test_fill_keeps_literal_braces():
    t = POINTWISE_YN[0]
    out = t.fill(question=r"Find $\frac{a}{b}$ when {answer} is literal", answer=r"\{1,2\}")
    assert "\\boxed{}" in out
    assert r"\frac{a}{b}" in out and "{answer} is literal" in out and r"\{1,2\}" in out
    with pytest.raises(KeyError):
        fill("{question} {answer}", question="q")


# ---- judge samples -------------------------------------------------------------------


def test_all_correct_gives_positive_pointwise():
    p = prompt("p0", "7")
    scored = rollouts("p0", [(1.0, "7"), (1.0, "7.0"), (1.0, r"\frac{14}{2}")], "7")
    for seed in range(30):
        rows = recycle([p], scored, cfg(arm="reward", seed=seed), batch_size=8, epoch=0, answer_suffix=ANSWER_SUFFIX)
        assert len(rows) == 1
        r = rows[0]
        assert r["kind"] == "pointwise"
        t = TEMPLATES_BY_ID[r["template_id"]]
        assert r["answer"] == t.correct_label and r["answer"] in ("Yes", "A")
        shown = by_rollout(scored)[r["source_rollout_id"]]
        assert shown["reward"] == 1.0
        assert r["question"] == t.fill(question=p["question"], answer=shown["extracted"])
        assert shown["response"] not in r["question"]  # final answers only, no chain of thought


def test_all_wrong_gives_negative_pointwise_on_nonempty_answer():
    p = prompt("p0", "7")
    scored = rollouts("p0", [(0.0, None), (0.0, "9"), (0.0, ""), (0.0, "11"), (0.0, None)], "7")
    seen = set()
    for seed in range(40):
        rows = recycle([p], scored, cfg(arm="reward", seed=seed), batch_size=8, epoch=0, answer_suffix=ANSWER_SUFFIX)
        assert len(rows) == 1
        r = rows[0]
        t = TEMPLATES_BY_ID[r["template_id"]]
        assert r["kind"] == "pointwise" and r["answer"] == t.wrong_label and r["answer"] in ("No", "B")
        shown = by_rollout(scored)[r["source_rollout_id"]]
        assert shown["reward"] == 0.0 and shown["extracted"] in ("9", "11")
        assert r["question"] == t.fill(question=p["question"], answer=shown["extracted"])
        seen.add(shown["extracted"])
    assert seen == {"9", "11"}


def test_all_wrong_without_answers_gives_no_judge_sample():
    p = prompt("p0", "7")
    scored = rollouts("p0", [(0.0, None)] * 4, "7")
    assert recycle([p], scored, cfg(arm="reward"), batch_size=8, epoch=0, answer_suffix=ANSWER_SUFFIX) == []
    rows = recycle([p], scored, cfg(arm="spark"), batch_size=8, epoch=0, answer_suffix=ANSWER_SUFFIX)
    assert judge_rows(rows) == []
    assert len(rows) == 1 and rows[0]["kind"] == "reflection"  # the CoT can still be reflected on


def test_mixed_pointwise_pairwise_frequencies_and_labels():
    p = prompt("p0", "7")
    scored = mixed_group("p0", "7", g=8, n_right=3)
    kinds = Counter()
    pointwise_targets = Counter()
    for seed in range(400):
        rows = recycle([p], scored, cfg(arm="reward", seed=seed), batch_size=4, epoch=0, answer_suffix=ANSWER_SUFFIX)
        assert len(rows) == 1
        r = rows[0]
        kinds[r["kind"]] += 1
        t = TEMPLATES_BY_ID[r["template_id"]]
        if r["kind"] == "pairwise":
            a_id, b_id = r["source_rollout_id"].split("+")
            a, b = by_rollout(scored)[a_id], by_rollout(scored)[b_id]
            assert {a["reward"], b["reward"]} == {0.0, 1.0}
            correct = "A" if a["reward"] == 1.0 else "B"
            assert r["answer"] == correct
            assert r["question"] == t.fill(question=p["question"], answer_a=a["extracted"], answer_b=b["extracted"])
        else:
            shown = by_rollout(scored)[r["source_rollout_id"]]
            expect = t.correct_label if shown["reward"] == 1.0 else t.wrong_label
            assert r["answer"] == expect
            pointwise_targets[shown["reward"]] += 1
    frac = kinds["pointwise"] / 400
    assert abs(frac - 0.3) < 0.08, kinds
    assert kinds["pairwise"] > 0
    assert min(pointwise_targets.values()) > 0.3 * kinds["pointwise"]  # about 50/50 targets
    # the correct answer lands in both positions
    letters = Counter()
    for seed in range(60):
        for r in recycle([p], scored, cfg(arm="reward", seed=seed, p_pointwise_mixed=0.0), 4, 0, ANSWER_SUFFIX):
            letters[r["answer"]] += 1
    assert letters["A"] > 10 and letters["B"] > 10


def test_pairwise_falls_back_to_pointwise_without_wrong_answers():
    p = prompt("p0", "7")
    scored = rollouts("p0", [(1.0, "7"), (0.0, None), (0.0, None)], "7")
    for seed in range(20):
        rows = recycle([p], scored, cfg(arm="reward", seed=seed, p_pointwise_mixed=0.0), 4, 0, ANSWER_SUFFIX)
        assert len(rows) == 1 and rows[0]["kind"] == "pointwise"
        assert rows[0]["answer"] in ("Yes", "A")


# ---- reflection ----------------------------------------------------------------------


def test_reflection_labels_and_shown_text():
    prompts = [prompt(f"p{i}", str(i)) for i in range(6)]
    scored = []
    for i in range(6):
        scored += mixed_group(f"p{i}", str(i), g=4, n_right=i % 3)
    rows = recycle(prompts, scored, cfg(arm="spark"), batch_size=64, epoch=1, answer_suffix=ANSWER_SUFFIX)
    refl = refl_rows(rows)
    assert len(refl) == 6  # every prompt has a wrong rollout
    src = {p["prompt_id"]: p for p in prompts}
    cot = [r for r in refl if r["template_id"].startswith("rf-cot")]
    ans = [r for r in refl if r["template_id"].startswith("rf-ans")]
    assert len(cot) == 3 and len(ans) == 3
    # the first half of eligible prompts get the CoT form
    assert [r["source_prompt_id"] for r in cot] == ["p0", "p1", "p2"]
    for r in refl:
        assert r["answer"] == src[r["source_prompt_id"]]["answer"]
        ro = by_rollout(scored)[r["source_rollout_id"]]
        assert ro["reward"] == 0.0 and ro["prompt_id"] == r["source_prompt_id"]
        t = TEMPLATES_BY_ID[r["template_id"]]
        q = src[r["source_prompt_id"]]["question"]
        if r in cot:
            assert r["question"] == t.fill(question=q, solution=ro["response"])
        else:
            assert r["question"] == t.fill(question=q, answer=ro["extracted"])
            assert ro["response"] not in r["question"]


def test_cot_fraction_setting():
    prompts = [prompt(f"p{i}", "1") for i in range(8)]
    scored = [r for i in range(8) for r in mixed_group(f"p{i}", "1", g=2, n_right=0)]
    for frac, n_cot in [(0.0, 0), (0.25, 2), (1.0, 8)]:
        rows = recycle(prompts, scored, cfg(arm="spark", cot_reflection_fraction=frac), 64, 0, ANSWER_SUFFIX)
        refl = refl_rows(rows)
        assert sum(r["template_id"].startswith("rf-cot") for r in refl) == n_cot


def test_no_reflection_when_all_correct():
    prompts = [prompt(f"p{i}", "5") for i in range(4)]
    scored = [r for i in range(4) for r in rollouts(f"p{i}", [(1.0, "5")] * 3, "5")]
    rows = recycle(prompts, scored, cfg(arm="spark"), 4, 0, ANSWER_SUFFIX)
    assert refl_rows(rows) == []
    assert len(rows) == 2  # judge data never take more than their half of the batch


def test_timed_out_rollouts_are_not_shown_as_wrong():
    p = prompt("p0", "7")
    scored = rollouts("p0", [(0.0, "7"), (0.0, "9")], "7")
    scored[0]["verify_status"] = "timeout"
    for seed in range(20):
        for r in recycle([p], scored, cfg(arm="spark", seed=seed), 8, 0, ANSWER_SUFFIX):
            assert r["source_rollout_id"] == "p0-r1"


# ---- mixing, shapes, determinism, schema ---------------------------------------------


def world(n_prompts: int, g: int, seed: int = 0):
    import random

    rnd = random.Random(seed)
    prompts, scored = [], []
    for i in range(n_prompts):
        ans = str(i + 1)
        prompts.append(prompt(f"q{i}", ans, image=PNG if i % 2 == 0 else None))
        outs = []
        for _ in range(g):
            u = rnd.random()
            outs.append((1.0, ans) if u < 0.4 else (0.0, None) if u < 0.5 else (0.0, str(rnd.randint(50, 99))))
        scored += rollouts(f"q{i}", outs, ans)
    return prompts, scored


def test_arms():
    prompts, scored = world(20, 4)
    assert recycle(prompts, scored, cfg(arm="policy"), 16, 0, ANSWER_SUFFIX) == []
    for arm in ("reward", "policy_reward"):
        rows = recycle(prompts, scored, cfg(arm=arm), 16, 0, ANSWER_SUFFIX)
        assert 0 < len(rows) <= 16
        assert refl_rows(rows) == []
    rows = recycle(prompts, scored, cfg(arm="spark"), 16, 0, ANSWER_SUFFIX)
    assert len(rows) == 16
    assert 0 < len(judge_rows(rows)) <= 8
    assert len(refl_rows(rows)) >= 8
    assert rows[: len(judge_rows(rows))] == judge_rows(rows)  # judge block first


@pytest.mark.parametrize("batch", [1, 3, 5, 10, 64])
def test_batch_cap(batch):
    prompts, scored = world(12, 5)
    for arm in ("reward", "spark"):
        rows = recycle(prompts, scored, cfg(arm=arm), batch, 0, ANSWER_SUFFIX)
        assert len(rows) <= batch
    rows = recycle(prompts, scored, cfg(arm="spark"), batch, 0, ANSWER_SUFFIX)
    if batch >= 2:
        assert len(judge_rows(rows)) <= batch // 2 or not refl_rows(rows)


@pytest.mark.parametrize("n_prompts, g", [(7, 3), (7, 5), (3, 1), (1, 8), (13, 2)])
def test_any_shape(n_prompts, g):
    prompts, scored = world(n_prompts, g, seed=g)
    rows = recycle(prompts, scored, cfg(arm="spark"), 2 * n_prompts, 0, ANSWER_SUFFIX)
    assert len(rows) <= 2 * n_prompts
    ids = [r["prompt_id"] for r in rows]
    assert len(ids) == len(set(ids))
    schemas.table(rows, schemas.PROMPTS)


def test_empty_inputs():
    assert recycle([], [], cfg(), 8, 0, ANSWER_SUFFIX) == []
    p = prompt("p0", "1")
    assert recycle([p], [], cfg(), 8, 0, ANSWER_SUFFIX) == []
    assert recycle([p], rollouts("p0", [(0.0, "2")]), cfg(), 0, 0, ANSWER_SUFFIX) == []


def test_determinism():
    prompts, scored = world(16, 4)
    a = recycle(prompts, scored, cfg(arm="spark", seed=3), 12, 2, ANSWER_SUFFIX)
    b = recycle(prompts, list(reversed(scored)), cfg(arm="spark", seed=3), 12, 2, ANSWER_SUFFIX)
    assert a == b
    c = recycle(prompts, scored, cfg(arm="spark", seed=3), 12, 3, ANSWER_SUFFIX)
    d = recycle(prompts, scored, cfg(arm="spark", seed=4), 12, 2, ANSWER_SUFFIX)
    strip = lambda rows: [(r["source_prompt_id"], r["template_id"], r["source_rollout_id"]) for r in rows]  # noqa: E731
    assert strip(a) != strip(c)
    assert strip(a) != strip(d)


def test_rows_conform_to_prompts_schema():
    prompts, scored = world(10, 4)
    rows = recycle(prompts, scored, cfg(arm="spark"), 20, 5, ANSWER_SUFFIX)
    assert rows
    t = schemas.table(rows, schemas.PROMPTS)
    assert t.num_rows == len(rows)
    src = {p["prompt_id"]: p for p in prompts}
    for r in rows:
        assert set(r) == set(schemas.PROMPTS.names)
        assert r["kind"] in ("pointwise", "pairwise", "reflection")
        assert re.fullmatch(rf"{re.escape(r['source_prompt_id'])}/{r['kind']}-e5-\d+", r["prompt_id"])
        s = src[r["source_prompt_id"]]
        assert r["image"] == s["image"] and r["source"] == s["source"]
        msg = json.loads(r["message"])
        content = msg[0]["content"]
        assert msg[0]["role"] == "user"
        assert (content[0]["type"] == "image") == (s["image"] is not None)
        assert content[-1]["text"] == r["question"]
        assert ANSWER_SUFFIX not in r["question"]  # the original instruction does not leak in
        assert r["template_id"] in TEMPLATES_BY_ID
        n_ids = 2 if r["kind"] == "pairwise" else 1
        assert len(r["source_rollout_id"].split("+")) == n_ids


def test_question_recovered_from_message_when_missing():
    p = prompt("p0", "7", question="How many apples?")
    p["question"] = ""
    rows = recycle([p], rollouts("p0", [(1.0, "7")], "7"), cfg(arm="reward"), 4, 0, ANSWER_SUFFIX)
    assert "How many apples?" in rows[0]["question"]
    assert ANSWER_SUFFIX not in rows[0]["question"]


def test_recycled_prompts_are_not_recycled_again():
    p = prompt("p0", "7")
    p["kind"] = schemas.KIND_REFLECTION
    assert recycle([p], rollouts("p0", [(0.0, "3")], "7"), cfg(), 4, 0, ANSWER_SUFFIX) == []


def test_judge_labels_are_verifiable_end_to_end():
    prompts, scored = world(24, 6, seed=7)
    rows = []
    for seed in range(5):
        rows += recycle(prompts, scored, cfg(arm="reward", seed=seed), 64, seed, ANSWER_SUFFIX)
    judged = judge_rows(rows)
    assert {r["kind"] for r in judged} == {"pointwise", "pairwise"}
    for r in judged:
        assert verify(f"Reasoning... \\boxed{{{r['answer']}}}", r["answer"])["reward"] == 1.0
        assert verify(f"Reasoning... \\boxed{{{OPPOSITE[r['answer']]}}}", r["answer"])["reward"] == 0.0


def test_bootstrap_reflection_samples_show_a_wrong_answer_and_target_the_truth():
    import random

    from spark_core.recycle.build import reflection_samples_for_bootstrap

    rows = generate(12, seed=5)
    out = reflection_samples_for_bootstrap(rows, random.Random(0))
    assert len(out) == len(rows)
    for (sample, target), src in zip(out, rows):
        assert sample["kind"] == "reflection" and target == sample["answer"] == str(src["answer"]).strip()
        assert sample["image"] == src["image"] and src["question"] in sample["question"]
        shown = re.findall(r"\d+", sample["question"].replace(src["question"], ""))
        assert shown and all(s != target for s in shown)  # the shown answer is a wrong one


def test_warm_start_mix_has_its_reflection_share():
    from spark_core.config import SparkConfig
    from spark_core.train.sft import bootstrap_examples

    cfg = SparkConfig()
    cfg.bootstrap.judge_fraction, cfg.bootstrap.reflection_fraction = 0.25, 0.25
    kinds = [row["kind"] for row, _ in bootstrap_examples(generate(30, seed=2), cfg, 40, seed=0)]
    assert kinds.count("reflection") == 10 and kinds.count("solve") == 20


def test_mixed_groups_only_leaves_no_verdict_to_read_off_the_problem():
    """Task a is solved every time, task b never, task c half the time. As published, a
    constant Yes on task a and No on task b earn the reward; with mixed groups only, just
    task c gives judge rows, and its pointwise rows show a right or a wrong answer at random."""
    prompts, scored = [], []
    for i in range(120):
        task = "abc"[i % 3]
        p = prompt(f"{task}{i}", "7")
        p["source"] = f"synthetic:{task}"
        prompts.append(p)
        outcomes = {"a": [(1.0, "7")] * 4, "b": [(0.0, "-8")] * 4, "c": [(1.0, "7"), (0.0, "-5")] * 2}[task]
        scored += rollouts(p["prompt_id"], outcomes, "7")
    loose = judge_rows(recycle(prompts, scored, cfg(arm="reward", seed=3), 500, 0, ANSWER_SUFFIX))
    tight = judge_rows(recycle(prompts, scored, cfg(arm="reward", seed=3, mixed_groups_only=True), 500, 0,
                               ANSWER_SUFFIX))

    def sides(rows):
        return Counter((r["source"], shows_correct(r)) for r in rows if r["kind"] == schemas.KIND_POINTWISE)

    before, after = sides(loose), sides(tight)
    assert before[("synthetic:a", True)] == 40 and before[("synthetic:b", False)] == 40
    assert {s for s, _ in after} == {"synthetic:c"}
    assert {r["source"] for r in tight} == {"synthetic:c"}
    n_right, n_wrong = after[("synthetic:c", True)], after[("synthetic:c", False)]
    assert n_right > 0 and n_wrong > 0 and n_right + n_wrong < 40
    assert any(r["kind"] == schemas.KIND_PAIRWISE for r in tight)
    for r in tight:  # every row still carries the verdict for the answer it shows
        if r["kind"] == schemas.KIND_POINTWISE:
            assert shows_correct(r) == ("-5" not in r["question"])
