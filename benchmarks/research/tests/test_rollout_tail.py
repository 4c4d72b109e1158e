"""benchmarks/research/rollout_tail.py on the real tiny model: its table, and the backend's top-p
filter giving the very samples transformers' sorting filter gives."""

from __future__ import annotations

from benchmarks.research import rollout_tail
from spark_core.config import load_config
from spark_core.data import generate

measure, table = rollout_tail.measure, rollout_tail.table


def test_topk_and_sort_filters_give_the_same_samples(tiny_dir, monkeypatch):
    import spark_core.rollout.hf as hf

    cfg = load_config("tiny-cpu", '{"rollout.n_samples": 4, "rollout.max_new_tokens": 4}')
    seen = {}
    real_generate = hf.HFBackend.generate

    def recording(self, prompts, spec, desc="rollout"):
        out = real_generate(self, prompts, spec, desc)
        seen[(spec.top_p, self.top_p_filter.__name__)] = [s.response_token_ids for s in out]
        return out

    monkeypatch.setattr(hf.HFBackend, "generate", recording)
    rows = generate(3, seed=2)
    results = measure(cfg, tiny_dir, {"solve": rows}, [1.0, 0.3], sort_filter=True)
    assert [(r["top_p"], r["filter"]) for r in results] == [(1.0, "-"), (0.3, "topk"), (0.3, "sort")]
    assert all(r["samples"] == 12 and 0.0 <= r["well_formed"] <= 1.0 for r in results)
    assert seen[(0.3, "NucleusFilter")] == seen[(0.3, "SortFilter")]
    assert seen[(0.3, "NucleusFilter")] != seen[(1.0, "NucleusFilter")]  # the filter does act
    assert hf.HFBackend.top_p_filter is hf.NucleusFilter  # the choice stays with the benchmark's backend
    lines = table(results).splitlines()
    assert lines[0].startswith("| top_p | filter |") and len(lines) == 5
