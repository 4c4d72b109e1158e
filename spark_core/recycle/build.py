"""Recycling: turn one epoch's scored rollouts into new labelled prompts.

Per original prompt (kind "solve") with G scored rollouts:

* one judge sample. All correct: pointwise on a correct answer (Yes/A). All wrong:
  pointwise on a wrong answer (No/B). Mixed: pointwise on a correct or a wrong answer
  (50/50) with probability ``p_pointwise_mixed``, else pairwise between one correct
  and one wrong answer in random order (label = letter of the correct one). Judge
  samples show extracted final answers only. With ``mixed_groups_only`` only mixed
  groups (a showable right and a showable wrong answer) give a judge sample.
* one reflection sample when some rollout is wrong: the first
  ``cot_reflection_fraction`` of those prompts show a wrong full response, the rest a
  wrong final answer; the label is the original ground truth.

Works for any number of prompts and any G, unlike the reference's fixed 64x8 shape.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from typing import Any

from spark_core import schemas
from spark_core.config import ANSWER_SUFFIX, RecycleConfig
from spark_core.recycle.templates import PAIRWISE, POINTWISE, REFLECTION_ANS, REFLECTION_COT, Template

# A rollout whose verification timed out or failed is not known to be wrong, so it is
# never shown as "the wrong answer" (that label could itself be wrong).
_UNRELIABLE_STATUS = frozenset({"timeout", "error"})


def stable_seed(*parts: Any) -> int:
    """A seed that is the same in every process (Python's hash() is salted per run)."""
    h = hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).digest()
    return int.from_bytes(h[:8], "big")


def _is_correct(r: dict) -> bool:
    return float(r.get("reward") or 0.0) >= 0.5


def _extracted(r: dict) -> str:
    x = r.get("extracted")
    return x.strip() if isinstance(x, str) else ""


def _question_text(p: dict, answer_suffix: str) -> str:
    """The plain question; recovered from the message (minus suffix) only if missing."""
    q = p.get("question") or ""
    if q.strip():
        return q.strip()
    try:
        content = json.loads(p.get("message") or "[]")[0]["content"]
        text = next(c["text"] for c in content if c.get("type") == "text")
    except Exception:  # noqa: BLE001 - malformed message: nothing to recycle from
        return ""
    text = text.strip()
    if answer_suffix and text.endswith(answer_suffix.strip()):
        text = text[: -len(answer_suffix.strip())]
    return text.strip()


class _Builder:
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.n = 0

    def row(self, p: dict, kind: str, template: Template, text: str, label: str, rollout_ids: list[str]) -> dict:
        src_id = str(p["prompt_id"])
        image = p.get("image")
        pid = f"{src_id}/{kind}-e{self.epoch}-{self.n}"
        self.n += 1
        return {
            "prompt_id": pid,
            "kind": kind,
            "message": schemas.message_json(text, has_image=image is not None),
            "question": text,
            "answer": label,
            "image": image,
            "source": p.get("source") or "",
            "template_id": template.id,
            "source_prompt_id": src_id,
            "source_rollout_id": "+".join(rollout_ids),
        }


def _pointwise(b: _Builder, rng: random.Random, p: dict, q: str, r: dict, correct: bool) -> dict:
    t = rng.choice(POINTWISE)
    label = t.correct_label if correct else t.wrong_label
    return b.row(p, schemas.KIND_POINTWISE, t, t.fill(question=q, answer=_extracted(r)), label, [r["rollout_id"]])


def _judge_sample(b: _Builder, rng: random.Random, p: dict, q: str, group: list[dict], cfg: RecycleConfig) -> dict | None:
    right = [r for r in group if _is_correct(r) and _extracted(r)]
    wrong = [r for r in group if not _is_correct(r) and _extracted(r)
             and r.get("verify_status") not in _UNRELIABLE_STATUS]
    n_right = sum(1 for r in group if _is_correct(r))
    if cfg.mixed_groups_only and not (right and wrong):
        return None
    if n_right == len(group):
        return _pointwise(b, rng, p, q, rng.choice(right), True) if right else None
    if n_right == 0:
        return _pointwise(b, rng, p, q, rng.choice(wrong), False) if wrong else None

    if rng.random() < cfg.p_pointwise_mixed:
        want_correct = rng.random() < 0.5
        pool = right if want_correct else wrong
        if not pool:  # the chosen side has nothing showable: use the other side
            want_correct, pool = not want_correct, (wrong if want_correct else right)
        return _pointwise(b, rng, p, q, rng.choice(pool), want_correct) if pool else None

    if not right:
        return _pointwise(b, rng, p, q, rng.choice(wrong), False) if wrong else None
    good = rng.choice(right)
    # an identical-looking wrong answer would make the pair unanswerable
    rivals = [r for r in wrong if _extracted(r) != _extracted(good)]
    if not rivals:
        return _pointwise(b, rng, p, q, good, True)
    bad = rng.choice(rivals)
    t = rng.choice(PAIRWISE)
    if rng.random() < 0.5:
        first, second, label = good, bad, "A"
    else:
        first, second, label = bad, good, "B"
    text = t.fill(question=q, answer_a=_extracted(first), answer_b=_extracted(second))
    return b.row(p, schemas.KIND_PAIRWISE, t, text, label, [first["rollout_id"], second["rollout_id"]])


def _reflection_sample(b: _Builder, rng: random.Random, p: dict, q: str, group: list[dict], show_cot: bool) -> dict | None:
    wrong = [r for r in group if not _is_correct(r) and r.get("verify_status") not in _UNRELIABLE_STATUS]
    if show_cot:
        pool = [r for r in wrong if (r.get("response") or "").strip()]
        if not pool:
            return None
        r = rng.choice(pool)
        t = rng.choice(REFLECTION_COT)
        text = t.fill(question=q, solution=r["response"].strip())
    else:
        pool = [r for r in wrong if _extracted(r)]
        if not pool:
            return None
        r = rng.choice(pool)
        t = rng.choice(REFLECTION_ANS)
        text = t.fill(question=q, answer=_extracted(r))
    return b.row(p, schemas.KIND_REFLECTION, t, text, str(p.get("answer") or ""), [r["rollout_id"]])


def _take(rng: random.Random, rows: list[dict], k: int) -> list[dict]:
    """A random subset of size k, kept in prompt order."""
    if k >= len(rows):
        return list(rows)
    keep = sorted(rng.sample(range(len(rows)), max(0, k)))
    return [rows[i] for i in keep]


def recycle(
    prompts: list[dict],
    scored: list[dict],
    cfg: RecycleConfig,
    batch_size: int,
    epoch: int,
    answer_suffix: str = ANSWER_SUFFIX,
) -> list[dict]:
    """Build up to `batch_size` recycled PROMPTS rows (judge block first, then reflection).

    `prompts` are the epoch's original PROMPTS rows; `scored` their SCORED_ROLLOUTS rows.
    Rows of other kinds are ignored: recycled prompts are not recycled again.
    `answer_suffix` is only used to recover a question from its message when the
    `question` column is empty; the templates themselves ask for \\boxed{}.
    """
    if cfg.arm == "policy" or batch_size <= 0:
        return []
    rng = random.Random(stable_seed("recycle", cfg.seed, epoch))

    groups: dict[str, list[dict]] = {}
    for r in scored:
        groups.setdefault(str(r["prompt_id"]), []).append(r)
    for g in groups.values():
        g.sort(key=lambda r: (int(r.get("sample_index") or 0), str(r.get("rollout_id"))))

    sources: list[tuple[dict, str, list[dict]]] = []
    seen: set[str] = set()
    for p in prompts:
        pid = str(p["prompt_id"])
        if pid in seen or pid not in groups or (p.get("kind") or schemas.KIND_SOLVE) != schemas.KIND_SOLVE:
            continue
        seen.add(pid)
        q = _question_text(p, answer_suffix)
        if q:
            sources.append((p, q, groups[pid]))

    b = _Builder(epoch)
    judge = [s for s in (_judge_sample(b, rng, p, q, g, cfg) for p, q, g in sources) if s is not None]
    if cfg.arm in ("reward", "policy_reward"):
        return _take(rng, judge, batch_size)

    eligible = [(p, q, g) for p, q, g in sources if any(not _is_correct(r) for r in g)]
    n_cot = int(math.floor(len(eligible) * cfg.cot_reflection_fraction + 0.5))
    reflect = [
        s for s in (_reflection_sample(b, rng, p, q, g, i < n_cot) for i, (p, q, g) in enumerate(eligible))
        if s is not None
    ]

    # spark: at most its share of the batch for each kind (a short kind leaves the
    # batch short rather than tilting the judge/reflection mix)
    judge_cap = int(math.floor(batch_size * cfg.max_judge_fraction))
    n_judge = min(len(judge), judge_cap)
    n_reflect = min(len(reflect), batch_size - judge_cap)
    return _take(rng, judge, n_judge) + _take(rng, reflect, n_reflect)


_OFFSETS = (-3, -2, -1, 1, 2, 3)
_DIGITS = re.compile(r"\d+")
_LETTER = re.compile(r"\(?([A-Ea-e])\)?")
MAX_WRONG_DRAWS = 20


def near_miss(truth: str, rng: random.Random) -> str:
    """A plausible wrong answer near `truth`, NOT yet checked: use `wrong_answers`.

    Integers move by 1-3; otherwise one run of digits (a decimal place, a numerator,
    a percentage, a coordinate) moves by 1-3, keeping its width; a choice letter
    becomes another letter, yes becomes no; anything else gets a digit appended.
    """
    t = truth.strip()
    try:
        return str(int(t) + rng.choice(_OFFSETS))
    except ValueError:
        pass
    m = _LETTER.fullmatch(t)
    if m:
        letter = m.group(1)
        other = rng.choice([c for c in "ABCDE" if c != letter.upper()])
        return t.replace(letter, other if letter.isupper() else other.lower())
    if t.lower() in ("yes", "no"):
        return {"yes": "No", "no": "Yes"}[t.lower()]
    runs = list(_DIGITS.finditer(t))
    if runs:
        r = rng.choice(runs)
        v = int(r.group())
        # a run that is not 0 stays >= 1, so a denominator never becomes 0
        moved = [v + k for k in _OFFSETS if v + k >= (1 if v >= 1 else 0)]
        new = str(rng.choice(moved)).zfill(len(r.group()))
        return t[: r.start()] + new + t[r.end():]
    return t + str(rng.randint(1, 9))


def wrong_answers(truths: list[str], rng: random.Random, timeout_s: float = 5.0,
                  max_draws: int = MAX_WRONG_DRAWS) -> list[str]:
    """One wrong answer per truth, each one that the verifier scores as wrong.

    A near miss can still be right ("0.5" -> "0.50", "1/2" for 0.5), and a judge
    prompt that shows it under a "No" label would teach or grade the wrong verdict. So
    every candidate goes through the project's verifier (``\\boxed{candidate}``
    against the truth); one it scores correct, or cannot decide (timeout, error), is
    drawn again, up to `max_draws` times. Raises ValueError naming the truth if no
    wrong answer is found.
    """
    from spark_core.reward import score_batch

    out: list[str | None] = [None] * len(truths)
    todo = list(range(len(truths)))
    for _ in range(max(1, max_draws)):
        if not todo:
            break
        cand = {i: near_miss(str(truths[i]), rng) for i in todo}
        scores = score_batch([f"\\boxed{{{cand[i]}}}" for i in todo], [str(truths[i]) for i in todo],
                             timeout_s=timeout_s)
        rest = []
        for i, sc in zip(todo, scores):
            if sc["status"] == "wrong":
                out[i] = cand[i]
            else:
                rest.append(i)
        todo = rest
    if todo:
        raise ValueError(f"no wrong answer found for the true answer {str(truths[todo[0]])!r} "
                         f"({len(todo)} answer(s) in all): {max_draws} candidates near it were all scored correct "
                         f"or could not be checked by the verifier")
    return out  # type: ignore[return-value]


def _with_near_misses(rows: list[dict], rng: random.Random, timeout_s: float):
    """(row, question, true answer, a verified wrong answer near it) for each row."""
    truths = [str(p["answer"]).strip() for p in rows]
    wrongs = wrong_answers(truths, rng, timeout_s=timeout_s)
    return [(p, _question_text(p, ANSWER_SUFFIX), truth, wrong) for p, truth, wrong in zip(rows, truths, wrongs)]


def judge_samples_for_bootstrap(rows: list[dict], rng: random.Random,
                                timeout_s: float = 5.0) -> list[tuple[dict, str, list[str]]]:
    """One judge prompt per row on a made-up candidate answer, with its correct verdict
    and the answers it shows (one pointwise, A then B pairwise).

    Used by the warm start to teach the judge format; candidates are the true answer
    or a verified wrong answer near it (`wrong_answers`), so the verdict is known
    without any rollout.
    """
    b = _Builder(epoch=-1)
    out = []
    for p, q, truth, wrong in _with_near_misses(rows, rng, timeout_s):
        right_r = {"rollout_id": "boot-right", "extracted": truth, "reward": 1.0}
        wrong_r = {"rollout_id": "boot-wrong", "extracted": wrong, "reward": 0.0}
        if rng.random() < 0.5:
            correct = rng.random() < 0.5
            row = _pointwise(b, rng, p, q, right_r if correct else wrong_r, correct)
            shown = [truth if correct else wrong]
        else:
            t = rng.choice(PAIRWISE)
            first, second, label = (truth, wrong, "A") if rng.random() < 0.5 else (wrong, truth, "B")
            row = b.row(p, schemas.KIND_PAIRWISE, t, t.fill(question=q, answer_a=first, answer_b=second), label,
                        ["boot-a", "boot-b"])
            shown = [first, second]
        out.append((row, row["answer"], shown))
    return out


def reflection_samples_for_bootstrap(rows: list[dict], rng: random.Random,
                                     timeout_s: float = 5.0) -> list[tuple[dict, str]]:
    """One reflection prompt per row, showing a verified wrong answer near the truth (as
    a brief earlier attempt or as a final answer), with the true answer as its target.

    Used by the warm start so that the reflection prompts of the recycled pass are
    answered by solving the problem again: a model that never saw one answers them with
    a verdict, every sample scores 0 and GRPO gets no signal from them.
    """
    b = _Builder(epoch=-1)
    out = []
    for p, q, truth, wrong in _with_near_misses(rows, rng, timeout_s):
        if rng.random() < 0.5:
            t = rng.choice(REFLECTION_COT)
            text = t.fill(question=q, solution=f"\\boxed{{{wrong}}}")
        else:
            t = rng.choice(REFLECTION_ANS)
            text = t.fill(question=q, answer=wrong)
        row = b.row(p, schemas.KIND_REFLECTION, t, text, truth, ["boot-wrong"])
        out.append((row, truth))
    return out
