"""The whole-run cost simulator (benchmarks/run_cost.py): its arithmetic on small
numbers worked out by hand, and the 7B table's claims (the segment design stays
within 25% overhead and 1.25x a colocated trainer in both cases)."""

from __future__ import annotations

import math

import pytest

from benchmarks import run_cost as rc

RUN = rc.Run(gpus=2, rollout_pods=2, gpus_per_rollout_pod=1, seqs=10, steps=4, eval_every=2, eval_prompts=10,
             eval_response=10, ckpt_gb=1, state_gb=6)
C = rc.Costs("hand", prompt_tokens=10, mean_response=10, recycled_extra=0.5, step_tokens_per_gpu_s=10,
             small_batch_efficiency=1.0, gen_share=0.5, node_latency_s=1, pod_start_s=2, image_pull_s=0,
             trainer_init_s=3, vllm_start_s=4, storage_gb_s=1, volume_gb_s=2, sync_s=1, light_pod_s=5)


def test_compute_by_hand():
    # policy pass: 10 x (10 + 10) = 200 tokens / (10 tok/s x 2 GPUs) = 10 s, half generating
    assert rc.pass_tokens(RUN, C, False) == 200
    assert rc.colocated_pass_s(RUN, C, False) == (5, 5)
    # recycled: prompt 10 + 0.5 x 10 = 15 -> 250 tokens -> 12.5 s
    assert rc.colocated_pass_s(RUN, C, True) == (6.25, 6.25)
    # eval: 10 x 20 tokens / 20 x 0.5 = 5 s, twice in 4 steps
    assert rc.eval_gen_s(RUN, C) == 5 and rc.n_evals(RUN) == 2
    # (4 steps x 22.5 s + 2 evals x 5 s) x 2 GPUs
    assert rc.compute_gpu_s(RUN, C) == 200


def test_colocated_by_hand():
    r = rc.colocated(RUN, C)
    # start 2 + 0 + 3 + 2 x 1 GB / 1 + 4 = 11; steps 4 x (22.5 + 2 syncs) = 98; evals 10; save 7 GB / 1 = 7
    assert r.wall_s == 126 and r.gpu_s == 252
    assert r.overhead == pytest.approx(1 - 200 / 252)


def test_segment_by_hand():
    r = rc.segment(RUN, C, k=2)
    # per segment: start 9, load (2 + 6) GB / 2 = 4, save 6 / 2 + 1 / 1 = 4 -> 17; 2 segments
    # GPU wall 2 x 17 + 4 x 24.5 + 10 = 142; between segments 2 x (2 x 1 + 5) = 14
    assert r.wall_s == 156 and r.gpu_s == 284 and r.nodes == 4
    assert r.gpu_s / rc.colocated(RUN, C).gpu_s == pytest.approx(284 / 252)
    # a resume checkpoint inside each 2-step segment: + 6 GB / 2 = 3 s per segment
    assert rc.segment(RUN, C, k=2, resume_every=1).gpu_s == 2 * (142 + 6)
    # object storage instead of the volume: load 8 / 1, save 6 / 1 + 1 -> per segment 9 + 8 + 7 = 24
    assert rc.segment(RUN, C, k=2, volume=False).gpu_s == 2 * (2 * 24 + 98 + 10)


def test_today_by_hand():
    r = rc.today(RUN, C)
    # policy pass: rollout 2 + 1 + 4 + 5 = 12, update 2 + 2 + 3 + 5 + 1 + 12 = 25, + 2 light pods + 4 latencies
    # recycled pass: 13.25 and 26.25; + select/log 10 + 2 -> 116.5 s a step; eval pods 2 x (2 + 1 + 4 + 10 + 1)
    assert r.wall_s == pytest.approx(4 * 116.5 + 2 * 18)
    # GPU: policy 12 x 2 + 25 x 2 = 74, recycled 26.5 + 52.5 = 79 per step; evals 2 x 17 x 1 GPU
    assert r.gpu_s == pytest.approx(4 * 153 + 34)


def test_seven_b_segment_within_target():
    run = rc.run_of("7b-8xh100")
    assert run.steps == math.ceil(38_900 / 64) and run.seqs == 512
    k = rc.pick_k(run, list(rc.CASES.values()))
    for c in rc.CASES.values():
        seg, base, old = rc.segment(run, c, k, 8), rc.colocated(run, c), rc.today(run, c)
        assert seg.overhead <= 0.25 and seg.gpu_s / base.gpu_s <= 1.25
        assert old.gpu_s / base.gpu_s > 2  # today's design is far off
        # longer segments never cost more
        assert rc.segment(run, c, 2 * k, 8).gpu_s <= seg.gpu_s


def test_prints_tables(capsys):
    rc.main(["--steps", "300"])
    out = capsys.readouterr().out
    assert "| today: pod per stage |" in out and "| colocated trainer |" in out and "| K (steps per segment) |" in out
    assert out.count("| step_tokens_per_gpu_s |") == 1 and "EasyR1" in out
