"""What a job's heartbeat reports (``progress.state()``): its step, whether it waits, and
moves, as the job's own code sets them."""

from __future__ import annotations

from heygem_ray import progress
from heygem_ray.job.context import StepClock


def test_the_step_a_job_waits_in_is_the_step_its_heartbeat_reports() -> None:
    """Compose waits on its chunks with ``steps.current = "render"`` (no block of its own):
    a job stopped there is stalled in render, not in the step it last entered."""
    steps = StepClock()
    assert progress.state()[2] == "plan"
    with steps("features"):
        assert progress.state()[2] == "features"
    steps.current = "render"
    assert progress.state()[2] == steps.current == "render"
    with steps("compose"):
        assert progress.state()[2] == "compose"


def test_a_wait_is_reported_while_it_lasts_and_its_end_is_a_move() -> None:
    moves, waits, _ = progress.state()
    assert not waits
    with progress.waiting():
        assert progress.state()[1]
    after, waits, _ = progress.state()
    assert not waits and after != moves
