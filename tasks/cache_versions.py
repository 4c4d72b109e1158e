"""Cache version of every cached stage. Bump a stage's version whenever its behaviour
changes (tests/test_cache_versions.py fails until the fingerprint is updated too)."""

CACHE_VERSIONS = {
    "data": "1",
    "base_model": "1",
    "bootstrap": "1",
    "judge_eval_set": "1",
    "select_prompts": "1",
    "rollout": "1",
    "reward": "1",
    "recycle": "1",
    "update": "1",
    "evaluate": "1",
}
