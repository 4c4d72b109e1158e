"""How the epochs of a run are cut into Flyte nodes: blocks (one sub-launch-plan
execution each) and, in segment mode, segments of K epochs (one GPU node each).

Flyte keeps the status of every node of a dynamic workflow in one etcd object (about
1.5 MB), and propeller walks every node each round; a 300-epoch run as one dynamic of
~12 nodes an epoch (~3,600 nodes) is in the range where that fails (flyte#4349,
flyte#4569, flyte#476). Each block is its own execution with its own object, and no
dynamic workflow gets more than MAX_NODES_PER_DYNAMIC nodes.
"""

from __future__ import annotations

from spark_core.config import SparkConfig

MAX_NODES_PER_DYNAMIC = 200
# nodes a block's dynamic creates: per epoch in "dag" mode (select, rollout, reward,
# recycle, update, queue, rollout, reward, update, eval, log = 11, plus margin); per
# segment in "segment" mode (the segment, its log), plus the block's join
DAG_NODES_PER_EPOCH = 12
SEGMENT_NODES = 2
SEGMENTS_PER_BLOCK = 8  # default block size in segment mode


def block_epochs(cfg: SparkConfig) -> int:
    """Epochs per block: loop.block_epochs, or the default for the mode; checked
    against the node bound."""
    lp = cfg.loop
    if lp.mode == "segment":
        n = lp.block_epochs or SEGMENTS_PER_BLOCK * lp.segment_steps
    else:
        n = lp.block_epochs or MAX_NODES_PER_DYNAMIC // DAG_NODES_PER_EPOCH
    nodes = block_nodes(cfg, n)
    if nodes > MAX_NODES_PER_DYNAMIC:
        raise ValueError(f"loop.block_epochs={n} gives {nodes} nodes in one dynamic workflow "
                         f"(at most {MAX_NODES_PER_DYNAMIC}); use a smaller block")
    return n


def segments(first: int, n: int, k: int) -> list[tuple[int, int]]:
    """(first epoch, epochs) of each segment of at most k epochs covering first..first+n-1."""
    return [(s, min(k, first + n - s)) for s in range(first, first + n, k)]


def block_nodes(cfg: SparkConfig, n: int) -> int:
    if cfg.loop.mode == "segment":
        return SEGMENT_NODES * len(segments(0, n, cfg.loop.segment_steps)) + 1
    return DAG_NODES_PER_EPOCH * n


def blocks(cfg: SparkConfig) -> list[tuple[int, int]]:
    """(first epoch, epochs) of each block of the run."""
    size = block_epochs(cfg)
    return [(b, min(size, cfg.epochs - b)) for b in range(0, cfg.epochs, size)]
