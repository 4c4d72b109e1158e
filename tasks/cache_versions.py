"""Cache version of every cached stage, and a fingerprint that keeps it honest.

Flyte's cache key is task name + cache version + inputs: editing a stage's code does
*not* invalidate its cached outputs. So every cached stage also has a fingerprint, the
sha256 of the raw bytes of the source files its behaviour depends on (STAGE_SOURCES),
recorded with its version in tasks/cache_fingerprints.json.
tests/test_cache_versions.py fails, naming the stage and the changed files, when a
stage's sources changed but its version did not.

How to bump, after changing code a cached stage runs:

    python -m tasks.cache_versions              # which stages changed, and which files
    # edit CACHE_VERSIONS below: "rollout": "1" -> "2" for every stage listed
    python -m tasks.cache_versions --update     # record the new versions and fingerprints

`--update` refuses (exit code 1, nothing written) while any stage has changed sources
and an unchanged version; it lists those stages and files. A change that really does
not alter outputs (a comment, a refactor) still needs a bump: the check is on bytes,
on purpose, so it cannot be argued with.

When a stage starts calling another module, add that file to STAGE_SOURCES; the test
also checks that the list covers every project module the stage's task function
imports, directly or through other project modules. `spark_core/config.py`,
`spark_core/schemas.py` and `tasks/common.py` are in every stage: they decide how the
config is read and what the artifacts look like.

This module is imported by every task module, so it imports nothing heavy.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys

# Version history: "2" everywhere is the first version with recorded fingerprints (every
# stage's sources had changed since "1"). Note why when bumping, e.g. `"rollout": "3",  # 3: top-p fixed`.
# 3 (all stages): config gained tensor-parallel rollouts for the 32b preset
# +1 (all stages): config batch check and train.tis_cap; fp32 LM head in the shared log-prob code (issue 9)
# +1 (all stages): config gained the loop section and the state volume; stage bodies moved into spark_core functions shared with the segment
# +1 (all stages): new tiny-cpu defaults (larger tiny model with a wider embedding init, more and easier
# synthetic problems, brief warm-start targets); eval.every; prefix_view resets the loop seeds; wrong
# answers checked by the verifier (bootstrap, judge_eval_set, recycle)
# +1 (all stages): all of the above together
# +1 (all stages): colour-amount synthetic tasks (data.synthetic_tasks), fan-in init of the tiny model,
# warm-start lr 1e-3, RL lr 5e-5, train.freeze_vision
# +1 (all stages): synthetic_split, one embedding-init rule, sft_step; the unused
# model.tiny.vision_out_hidden_size is gone (the vision merger's width is the text width); judge_draws
# +1 (all stages): eval.answer_likelihood_problems (the held-out true answer's probability)
# +1 (all stages): rollout.top_p documented and explicit in the GPU presets; the HF backend's top-p filter reads the nucleus off topk
CACHE_VERSIONS = {
    "data": "11",  # 4: ViRL39K forms in the loader
    "base_model": "11",  # 4: vision ids in responses (log-prob pass)
    "bootstrap": "13",  # 5: loader and log-prob changes
    "judge_eval_set": "14",  # 4: balanced held-out judge set; 5: shares tasks/evaluate.py with the eval Deck; 7: explicit sampling knobs; 9: wrong answers verified
    "select_prompts": "11",  # 4: ViRL39K forms in the loader
    "rollout": "11",  # 4: explicit sampling knobs, vision tokens never sampled, PIL image processor in vLLM
    "reward": "11",
    "recycle": "12",
    "update": "15",  # 2: resume mid-pass; 3: optimizer state shared by the ranks of a node; 5: NaN-gradient hook; 6: issue 9 trainer; 7: GRPOTrainer; 9: full_weights context; 13: TORCH_CUDA_ARCH_LIST made readable for fused Adam
    "evaluate": "13",  # 12: eval/judge_answer_prob; 4: a Deck with this epoch's per-benchmark table; 5: explicit sampling knobs
    "segment": "14",  # 13: teacher-forced eval metrics in segments; 12: eval/judge_answer_prob; 10: TORCH_CUDA_ARCH_LIST made readable for fused Adam; 6: its own image with vLLM and DeepSpeed; 5: HF colocated engine gathers ZeRO-3 weights while it generates
}

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINGERPRINTS_FILE = os.path.join(ROOT, "tasks", "cache_fingerprints.json")

# The cached task functions of each stage: [(module file, function name)]. Tasks that
# share a stage share its version.
STAGE_TASKS = {
    "data": [("tasks/data.py", "prepare_data")],
    "select_prompts": [("tasks/data.py", "select_prompts")],
    "base_model": [("tasks/model.py", "base_model")],
    "bootstrap": [("tasks/model.py", "bootstrap")],
    "judge_eval_set": [("tasks/evaluate.py", "judge_eval_set")],
    "evaluate": [("tasks/evaluate.py", "evaluate_policy")],
    "rollout": [("tasks/rollout.py", "rollout_shard")],
    "reward": [("tasks/reward.py", "score_rollouts")],
    "recycle": [("tasks/recycle.py", "recycle_rollouts"), ("tasks/recycle.py", "queue_recycled")],
    "update": [("tasks/update.py", "update_policy")],
    "segment": [("tasks/segment.py", "run_segment")],
}

_COMMON = ["tasks/__init__.py", "tasks/common.py", "spark_core/__init__.py", "spark_core/config.py",
           "spark_core/memory_budget.py", "spark_core/schemas.py"]
_MODEL = ["spark_core/model/*.py"]
_ROLLOUT = ["spark_core/rollout/__init__.py", "spark_core/rollout/base.py", "spark_core/rollout/hf.py",
            "spark_core/rollout/vllm_backend.py"] + _MODEL

# Files (globs relative to the project root) whose bytes define each stage's behaviour.
STAGE_SOURCES: dict[str, list[str]] = {
    "data": _COMMON + ["tasks/data.py", "spark_core/data/*.py"],
    "select_prompts": _COMMON + ["tasks/data.py", "spark_core/data/*.py"],
    "base_model": _COMMON + ["tasks/model.py"] + _MODEL,
    "bootstrap": _COMMON + ["tasks/model.py", "spark_core/train/__init__.py", "spark_core/train/sft.py",
                            "spark_core/train/grpo.py", "spark_core/recycle/*.py", "spark_core/data/*.py",
                            "spark_core/reward/*.py"] + _MODEL,
    "judge_eval_set": _COMMON + ["tasks/evaluate.py", "spark_core/evaluate/__init__.py",
                                 "spark_core/evaluate/judge_set.py", "spark_core/recycle/*.py",
                                 "spark_core/reward/*.py"] + _ROLLOUT,
    "evaluate": _COMMON + ["tasks/evaluate.py", "spark_core/evaluate/__init__.py", "spark_core/evaluate/core.py",
                           "spark_core/evaluate/likelihood.py",
                           "spark_core/evaluate/report.py", "spark_core/reward/*.py"] + _ROLLOUT,
    "rollout": _COMMON + ["tasks/rollout.py"] + _ROLLOUT,
    "reward": _COMMON + ["tasks/reward.py", "spark_core/reward/*.py"],
    "recycle": _COMMON + ["tasks/recycle.py", "spark_core/recycle/*.py", "spark_core/reward/*.py"],
    "update": _COMMON + ["tasks/update.py", "spark_core/train/__init__.py", "spark_core/train/engine.py",
                         "spark_core/train/collectives.py",
                         "spark_core/train/grpo.py"] + _MODEL,
    "segment": _COMMON + ["tasks/segment.py", "tasks/update.py", "tasks/resources.py", "spark_core/segment.py",
                          "spark_core/loop_plan.py", "spark_core/train/__init__.py", "spark_core/train/collectives.py",
                          "spark_core/train/engine.py", "spark_core/train/grpo.py", "spark_core/data/*.py", "spark_core/recycle/*.py",
                          "spark_core/reward/*.py", "spark_core/evaluate/__init__.py", "spark_core/evaluate/core.py",
                          "spark_core/evaluate/likelihood.py"]
                         + _ROLLOUT + ["spark_core/rollout/colocated.py"],
}


def stage_files(stage: str, root: str = ROOT) -> list[str]:
    """The files of a stage, relative to `root`, sorted. A glob matching nothing is an error."""
    files: set[str] = set()
    for pattern in STAGE_SOURCES[stage]:
        hits = glob.glob(os.path.join(root, pattern))
        if not hits:
            raise FileNotFoundError(f"stage {stage!r}: source pattern {pattern!r} matches no file under {root}")
        files.update(os.path.relpath(h, root).replace(os.sep, "/") for h in hits)
    return sorted(files)


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_hashes(stage: str, root: str = ROOT) -> dict[str, str]:
    return {rel: _sha256_file(os.path.join(root, rel)) for rel in stage_files(stage, root)}


def combine(hashes: dict[str, str]) -> str:
    """One fingerprint from per-file hashes (names included, so a renamed file counts)."""
    h = hashlib.sha256()
    for rel in sorted(hashes):
        h.update(rel.encode() + b"\0" + hashes[rel].encode() + b"\n")
    return h.hexdigest()


def current(root: str = ROOT) -> dict[str, dict]:
    """{stage: {"version", "fingerprint", "files"}} for the code as it is now."""
    out = {}
    for stage in CACHE_VERSIONS:
        hashes = file_hashes(stage, root)
        out[stage] = {"version": CACHE_VERSIONS[stage], "fingerprint": combine(hashes), "files": hashes}
    return out


def load_recorded(path: str | None = None) -> dict[str, dict]:
    path = path or FINGERPRINTS_FILE
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def changed_files(recorded: dict, now: dict) -> list[str]:
    """Files added, removed or modified between two records of one stage."""
    old, new = recorded.get("files", {}), now.get("files", {})
    out = [f"{f} (modified)" for f in sorted(set(old) & set(new)) if old[f] != new[f]]
    out += [f"{f} (added)" for f in sorted(set(new) - set(old))]
    out += [f"{f} (removed)" for f in sorted(set(old) - set(new))]
    return out


def stale_stages(recorded: dict[str, dict], now: dict[str, dict]) -> dict[str, list[str]]:
    """Stages whose sources changed while their version stayed the same: {stage: files}."""
    return {stage: changed_files(recorded[stage], rec) for stage, rec in now.items()
            if stage in recorded and recorded[stage]["version"] == rec["version"]
            and recorded[stage]["fingerprint"] != rec["fingerprint"]}


def unrecorded_stages(recorded: dict[str, dict], now: dict[str, dict]) -> list[str]:
    """Stages that are new or whose version was bumped without `--update`."""
    return [s for s, rec in now.items() if s not in recorded or recorded[s]["version"] != rec["version"]]


def stale_message(stale: dict[str, list[str]]) -> str:
    lines = ["These cached stages changed but kept their cache version, so Flyte would reuse outputs "
             "computed by the old code. Bump their version in tasks/cache_versions.py (CACHE_VERSIONS), "
             "then run `python -m tasks.cache_versions --update`:"]
    for stage, files in sorted(stale.items()):
        lines.append(f"  {stage} (version {CACHE_VERSIONS.get(stage, '?')}): " + ", ".join(files))
    return "\n".join(lines)


def plan_update(recorded: dict[str, dict], now: dict[str, dict]) -> tuple[dict[str, dict], dict[str, list[str]]]:
    """(the new record, stale stages). The record takes the current fingerprint of every
    stage that is new or was bumped, keeps the others, drops stages that no longer exist.
    If any stage is stale the caller must refuse to write."""
    stale = stale_stages(recorded, now)
    new = {s: (now[s] if s in unrecorded_stages(recorded, now) else recorded[s]) for s in now}
    return new, stale


def write_recorded(record: dict[str, dict], path: str | None = None) -> None:
    path = path or FINGERPRINTS_FILE
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None, *, root: str = ROOT, path: str | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tasks.cache_versions",
                                description="Check or record the cache fingerprints of the cached stages.")
    p.add_argument("--update", action="store_true",
                   help="record versions and fingerprints of new or bumped stages (refuses if any stage is stale)")
    args = p.parse_args(argv)
    recorded, now = load_recorded(path), current(root)
    new, stale = plan_update(recorded, now)
    if stale:
        print(stale_message(stale), file=sys.stderr)
        if args.update:
            print("Nothing written.", file=sys.stderr)
        return 1
    pending = unrecorded_stages(recorded, now)
    dropped = sorted(set(recorded) - set(now))
    if not args.update:
        if pending or dropped:
            print("Not recorded yet (run with --update): " + ", ".join(pending + [f"{d} (removed)" for d in dropped]))
            return 1
        print("All cache versions match their recorded fingerprints.")
        return 0
    if new != recorded:
        write_recorded(new, path)
    for s in pending:
        was = recorded.get(s, {}).get("version")
        print(f"recorded {s}: version {was} -> {now[s]['version']}" if was else f"recorded {s}: version {now[s]['version']}")
    for d in dropped:
        print(f"dropped {d} (no longer a cached stage)")
    if not pending and not dropped:
        print("Nothing to record: all cache versions match their fingerprints.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
