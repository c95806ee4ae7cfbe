"""What a job's heartbeat reports (``progress.state()``): its step, whether it waits, and
moves, as the job's own code sets them; and how a job task's process shares its node's cores."""

from __future__ import annotations

import os
import subprocess
import sys

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


def test_a_job_process_runs_opencv_on_a_share_of_the_node_not_a_thread_per_core() -> None:
    """OpenCV's pool has a thread per core of the machine by default (OPENCV_FOR_THREADS_NUM
    stands in for a 16-core node's); a job task's process sizes it for a job per core."""
    code = (
        "import cv2\n"
        "from heygem_ray.driver.task import OPENCV_THREADS, share_cores\n"
        "before = cv2.getNumThreads()\n"
        "share_cores()\n"
        "print(before, cv2.getNumThreads(), OPENCV_THREADS)\n"
    )
    env = {**os.environ, "OPENCV_FOR_THREADS_NUM": "16"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["16", "2", "2"], proc.stdout
