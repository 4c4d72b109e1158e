"""The HF backend's top-p filter keeps exactly transformers' nucleus, without a full sort."""

from __future__ import annotations

import pytest
import torch
from transformers import TemperatureLogitsWarper, TopPLogitsWarper

from spark_core.config import ModelConfig
from spark_core.data import generate
from spark_core.model.loading import load_model, load_processor
from spark_core.model.prompting import processor_inputs
from spark_core.rollout.base import SamplingSpec
from spark_core.rollout.hf import HFBackend, NucleusFilter


def _kept(scores: torch.Tensor) -> torch.Tensor:
    return ~torch.isinf(scores)


def _transformers_nucleus(logits, top_p, temperature):
    return _kept(TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, logits.clone())))


def _ours(logits, top_p, temperature, k):
    # the backend runs the filter before transformers' temperature warper, as generate() does
    return _kept(TemperatureLogitsWarper(temperature)(None, NucleusFilter(top_p, temperature, k=k)(None, logits.clone())))


def _differ_only_at_the_edge(logits, temperature, top_p, ref, ours, tol=1e-5) -> bool:
    """Tokens kept by one filter and not the other have, in float64, a mass above them
    within `tol` of top_p: rounding, not a different rule."""
    p = torch.softmax(logits.double() / temperature, dim=-1)
    vals, idx = p.sort(dim=-1, descending=True)
    above = torch.zeros_like(p).scatter_(-1, idx, vals.cumsum(-1) - vals)
    diff = ref ^ ours
    return bool(((above[diff] - top_p).abs() < tol).all()) and int(diff.sum(-1).max()) <= 1


@pytest.fixture(scope="module")
def next_token_logits(tiny_dir):
    """Next-token logits of the real tiny model on real prompts: as built (nearly flat over
    the 152k vocabulary) and sharpened (a few likely tokens, then a long tail)."""
    cfg = ModelConfig()
    proc, model = load_processor(tiny_dir, cfg), load_model(tiny_dir, cfg)
    inputs = processor_inputs(proc, generate(6, seed=3))
    with torch.no_grad():
        logits = model(**inputs).logits[:, -1, :].float()
    return {"flat": logits, "peaked": logits * 40.0}


@pytest.mark.parametrize("shape", ["flat", "peaked"])
@pytest.mark.parametrize("top_p,temperature", [(0.9, 1.0), (0.5, 1.0), (0.9, 0.7)])
@pytest.mark.parametrize("k", [256, 2])  # k=2: every row's nucleus is larger, so all rows take the sort
def test_same_nucleus_as_transformers(next_token_logits, shape, top_p, temperature, k):
    logits = next_token_logits[shape]
    ref = _transformers_nucleus(logits, top_p, temperature)
    ours = _ours(logits, top_p, temperature, k)
    if shape == "flat" or k == 2:  # nucleus wider than k: transformers' own sort, bit for bit
        assert torch.equal(ref, ours), (int(ref.sum()), int(ours.sum()))
    else:  # read off the top k: the same set, up to float rounding at its edge
        assert _differ_only_at_the_edge(logits, temperature, top_p, ref, ours)
    assert bool(ours.any(-1).all())  # the likeliest token is always kept
    if shape == "peaked" and top_p <= 0.9:
        assert int(ours.sum(-1).max()) < logits.shape[-1] // 10  # the filter really removes the tail


def test_rows_that_need_the_sort_and_rows_that_do_not_mix_in_one_batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5000, generator=g)
    logits[0, :3] += 30.0  # nucleus of a few tokens (topk path)
    logits[2, :40] += 9.0  # nucleus of ~40 tokens: larger than k=16 (sort path)
    ref = _transformers_nucleus(logits, 0.9, 1.0)
    ours = _ours(logits, 0.9, 1.0, k=16)
    assert _differ_only_at_the_edge(logits, 1.0, 0.9, ref, ours)
    assert torch.equal(ref[[1, 2]], ours[[1, 2]])  # the rows that take the sort: bit for bit
    assert int(ours[0].sum()) <= 3 and int(ours[2].sum()) > 16 and int(ours[1].sum()) > 1000


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_top_p_outside_zero_one_is_refused(bad):
    with pytest.raises(ValueError, match="top_p"):
        NucleusFilter(bad)


def test_backend_samples_only_from_the_nucleus(tiny_dir):
    """End to end: with top_p the backend's samples stay in the nucleus; without it they
    come from the whole vocabulary (the tiny model as built is nearly flat)."""
    cfg = ModelConfig()
    backend = HFBackend(tiny_dir, cfg)
    rows = generate(2, seed=5)
    seen: dict[float, set[int]] = {}
    for top_p in (1.0, 0.05):
        samples = backend.generate(rows, SamplingSpec(n=4, temperature=1.0, top_p=top_p, max_new_tokens=3, seed=1))
        seen[top_p] = {t for s in samples for t in s.response_token_ids}
    # a 5% nucleus of a nearly flat 152k distribution is a few thousand tokens at most
    assert len(seen[1.0]) > 10
    inputs = processor_inputs(backend.processor, rows)
    with torch.no_grad():
        first = backend.model(**inputs).logits[:, -1, :].float()
    nucleus = set(torch.nonzero(_transformers_nucleus(first, 0.05, 1.0))[:, 1].tolist())
    samples = backend.generate(rows, SamplingSpec(n=4, temperature=1.0, top_p=0.05, max_new_tokens=1, seed=2))
    assert {s.response_token_ids[0] for s in samples} <= nucleus
