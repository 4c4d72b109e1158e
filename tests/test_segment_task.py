"""The segment task's resume slots go through Flyte's intra-task checkpoint: what one
attempt publishes, the next attempt (a new pod, checkpoint_src = the last attempt's
destination) restores; with the state volume mounted they live on the volume."""

from __future__ import annotations

from flytekit.core.checkpointer import SyncCheckpoint
from flytekit.core.context_manager import ExecutionParameters, FlyteContextManager


def _with_checkpoint(cp):
    ctx = FlyteContextManager.current_context()
    b = ExecutionParameters.new_builder(ctx.user_space_params)
    b.checkpoint = cp
    es = ctx.execution_state.with_params(user_space_params=b.build())
    return FlyteContextManager.with_context(ctx.with_execution_state(es))


def test_slots_travel_through_flyte_checkpoints(tmp_path, monkeypatch):
    from tasks.checkpoints import segment_checkpoints

    monkeypatch.delenv("SPARK_STATE_DIR", raising=False)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "pod1"))
    (tmp_path / "pod1").mkdir()
    slot = tmp_path / "slot-a"
    slot.mkdir()
    (slot / "spark_segment.json").write_text('{"done": 1}')
    with _with_checkpoint(SyncCheckpoint(checkpoint_dest=str(tmp_path / "attempt1"))):
        ck = segment_checkpoints("key1")
        assert ck.local_dir.startswith(str(tmp_path / "pod1"))
        ck.publish(str(slot))
    # the retry: another pod, whose checkpoint source is the first attempt's destination
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "pod2"))
    (tmp_path / "pod2").mkdir()
    with _with_checkpoint(SyncCheckpoint(checkpoint_dest=str(tmp_path / "attempt2"),
                                         checkpoint_src=str(tmp_path / "attempt1"))):
        ck = segment_checkpoints("key1")
        target = tmp_path / "restored"
        target.mkdir()
        assert ck.restore(str(target)) is True
        assert (target / "spark_segment.json").read_text() == '{"done": 1}'


def test_slots_live_on_the_state_volume(tmp_path, monkeypatch):
    from tasks.checkpoints import segment_checkpoints

    monkeypatch.setenv("SPARK_STATE_DIR", str(tmp_path))
    ck = segment_checkpoints("key2")
    assert ck.local_dir == str(tmp_path / "resume" / "key2") and ck.publish is None and ck.restore is None
