"""Two ranks (torchrun, gloo): the step's gradient is the token mean over both ranks'
samples, equal to the same step taken by one rank in one micro-batch.

DeepSpeed averages gradients over data-parallel ranks; the trainer divides each
micro-batch's token sum by the step's token count over all ranks and undoes that
average, so ranks holding different numbers of tokens (7 and 9 here) weigh every token
the same.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent('''
    import sys, torch
    from deepspeed.utils import safe_get_full_grad
    from spark_core.config import SparkConfig
    from spark_core.train.engine import GRPOTrainer

    data, model_dir, out = sys.argv[1], sys.argv[2], sys.argv[3]
    rows, scored = torch.load(data, weights_only=False)
    cfg = SparkConfig()
    cfg.train.train_batch_size, cfg.train.micro_batch_size, cfg.train.kl_coef = 4, 2, 0.0
    trainer = GRPOTrainer(cfg, model_dir, model_dir)
    assert trainer.dist.world == 2 and trainer.ds_config["gradient_accumulation_steps"] == 1
    opt, grads = trainer.engine.optimizer, {}
    real_step = opt.step

    def step(*a, **kw):
        if not grads:
            for name, p in trainer.module.named_parameters():  # a collective: every rank calls it
                g = safe_get_full_grad(p)
                if g is not None:
                    grads[name] = g.detach().clone().float()
        return real_step(*a, **kw)

    opt.step = step
    m = trainer.train_pass(rows, scored, "policy")
    assert m["steps"] == 1 and not m["step_log"][0]["skipped"]
    if trainer.dist.rank == 0:
        torch.save(grads, out)
''')


def test_two_ranks_give_the_one_rank_gradient(tiny_dir, tmp_path):
    from tests.test_trainer_loss_norm import LENGTHS, _step_gradient

    from spark_core.config import SparkConfig
    from spark_core.data import generate
    from spark_core.rollout.base import SamplingSpec
    from spark_core.rollout.hf import HFBackend

    rows = generate(2, seed=21)
    samples = HFBackend(tiny_dir, SparkConfig().model).generate(rows, SamplingSpec(n=2, max_new_tokens=8, seed=4))
    scored = [dict(prompt_id=s.prompt_id, prompt_token_ids=s.prompt_token_ids,
                   response_token_ids=s.response_token_ids[:n], old_logprobs=s.logprobs[:n], reward=r)
              for s, n, r in zip(samples, LENGTHS, [1.0, 0.0, 0.0, 1.0])]
    torch.save((rows, scored), tmp_path / "data.pt")
    (tmp_path / "run.py").write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", MASTER_PORT="29733")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29733", str(tmp_path / "run.py"), str(tmp_path / "data.pt"), tiny_dir,
                           str(tmp_path / "grads.pt")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    two = torch.load(tmp_path / "grads.pt")
    one = _step_gradient(tiny_dir, rows, scored, micro=4)  # one rank, one micro-batch of 4
    assert two.keys() == one.keys() and one
    for k in one:
        err = float((two[k] - one[k]).norm())
        assert err <= 1e-4 * float(one[k].norm()) + 1e-9, (k, err, float(one[k].norm()))
