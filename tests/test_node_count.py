"""Long runs stay within Flyte's limits: the dynamic workflows of a full-length 7B run
(one pass over ViRL39K, 608 SPARK epochs, and a 300-epoch run), compiled offline the way
propeller compiles them at run time, each hold at most a few hundred nodes."""

from __future__ import annotations

import pytest
from flytekit.configuration import Image, ImageConfig, SerializationSettings
from flytekit.core.context_manager import FlyteContextManager

from spark_core.config import load_config
from spark_core.loop_plan import MAX_NODES_PER_DYNAMIC, block_nodes, blocks

SETTINGS = SerializationSettings(image_config=ImageConfig(default_image=Image(name="d", fqn="img", tag="t")),
                                 project="p", domain="d", version="v")


def _compiled_nodes(dyn, **native) -> list:
    """The nodes of `dyn`'s sub-workflow for these inputs (the others stay promises)."""
    dyn._wf = None  # compile afresh for these inputs
    ctx = FlyteContextManager.current_context().with_serialization_settings(SETTINGS)
    with FlyteContextManager.with_context(ctx) as c:
        spec = dyn.compile_into_workflow(c, dyn._task_function, **native)
    dyn._wf = None
    return list(spec.nodes)


def _config(epochs: int, mode: str):
    return load_config("7b-8xh100").with_overrides({"epochs": epochs, "loop.mode": mode})


@pytest.mark.parametrize("mode", ["segment", "dag"])
@pytest.mark.parametrize("epochs", [608, 300])
def test_full_length_7b_run_fits(epochs, mode):
    from workflows.spark import coevolve, coevolve_block

    cfg = _config(epochs, mode)
    plan = blocks(cfg)
    assert sum(n for _, n in plan) == epochs and plan[0][0] == 0
    outer = _compiled_nodes(coevolve, config=cfg)
    # eval-e0, its log, one launch-plan node per block, the join and finish_tracking
    lp_nodes = [n for n in outer if n.workflow_node is not None and n.workflow_node.launchplan_ref is not None]
    assert len(lp_nodes) == len(plan) and all(n.workflow_node.launchplan_ref.name == "spark_block" for n in lp_nodes)
    assert len(outer) == len(plan) + 4 <= MAX_NODES_PER_DYNAMIC
    for first, n in {plan[0], plan[-1]}:
        inner = _compiled_nodes(coevolve_block, config=cfg, first_epoch=first, n_epochs=n)
        assert len(inner) <= block_nodes(cfg, n) <= MAX_NODES_PER_DYNAMIC, (first, n, len(inner))
        if mode == "segment":
            segs = [x for x in inner
                    if x.task_node is not None and x.task_node.reference_id.name == "tasks.segment.run_segment"]
            assert len(segs) == -(-n // cfg.loop.segment_steps)
    if mode == "dag":  # the whole fine-grained run as one dynamic, as before the blocks, would hold far more
        assert block_nodes(cfg, epochs) > 10 * MAX_NODES_PER_DYNAMIC


def test_a_block_too_large_is_refused():
    cfg = load_config("tiny-cpu").with_overrides({"epochs": 100, "loop.block_epochs": 50})
    with pytest.raises(ValueError, match="nodes in one dynamic"):
        blocks(cfg)


def test_segments_and_blocks_cover_every_epoch_once():
    from spark_core.loop_plan import segments

    assert segments(16, 20, 16) == [(16, 16), (32, 4)]
    cfg = load_config("7b-8xh100").with_overrides({"epochs": 300})
    plan = blocks(cfg)
    covered = [e for first, n in plan for s, k in segments(first, n, cfg.loop.segment_steps) for e in range(s, s + k)]
    assert covered == list(range(300))


def test_loop_config_is_checked():
    with pytest.raises(ValueError, match="loop.mode"):
        load_config("tiny-cpu").with_overrides({"loop.mode": "fused"})
    with pytest.raises(ValueError, match="segment_steps"):
        load_config("tiny-cpu").with_overrides({"loop.segment_steps": 0})


def test_state_volume_pod_template():
    from tasks.resources import state_pod_template

    assert state_pod_template("", "/mnt/x") is None  # no claim: state goes through object storage
    pt = state_pod_template("spark-state", "/mnt/x")
    vol = pt.pod_spec.volumes[0]
    assert vol.persistent_volume_claim.claim_name == "spark-state"
    mount = pt.pod_spec.containers[0].volume_mounts[0]
    assert (mount.name, mount.mount_path) == (vol.name, "/mnt/x") and pt.primary_container_name == "primary"
