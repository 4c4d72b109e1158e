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
    from spark_core.config import SparkConfig
    from spark_core.train.engine import GRPOTrainer
    from tests.helpers import first_step_gradient

    data, model_dir, out = sys.argv[1], sys.argv[2], sys.argv[3]
    rows, scored = torch.load(data, weights_only=False)
    cfg = SparkConfig()
    cfg.train.train_batch_size, cfg.train.micro_batch_size, cfg.train.kl_coef = 4, 2, 0.0
    trainer = GRPOTrainer(cfg, model_dir, model_dir)
    assert trainer.dist.world == 2 and trainer.ds_config["gradient_accumulation_steps"] == 1
    grads = first_step_gradient(trainer, rows, scored)  # every rank takes part in the gather
    if trainer.dist.rank == 0:
        torch.save(grads, out)
''')


def test_two_ranks_give_the_one_rank_gradient(tiny_dir, tmp_path):
    from tests.test_trainer_loss_norm import _step_gradient, unequal_rollouts

    rows, scored = unequal_rollouts(tiny_dir)
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
