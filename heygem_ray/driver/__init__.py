"""The driver: a manifest in, a results table out, the jobs run on Ray.

* ``run``: ``submit``, the numbered recipe of a run (read the manifest, hold the output folder,
  skip what an earlier run proved complete, connect, render, write the table);
* ``hold``: one run per output folder (the run lock);
* ``resume``: what a rerun trusts, and each finished row kept on disk at once;
* ``missing``: rows that fail at once on a file a job of the run found missing;
* ``connect``: Ray, local or a cluster, with its token;
* ``loop``: job tasks kept in flight, their rows handed on, lost attempts retried;
* ``task``: the job task itself, on a Ray worker (no PyTorch there);
* ``pool``: the model worker actors, started, watched and replaced within a budget;
* ``actor``: a ``ModelWorker`` as a Ray actor; ``router``: which worker renders each chunk;
* ``calls``: calls to the run's actors, retried while Ray cannot reach them.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from heygem_ray.driver.run import RunCallbacks, RunSummary, submit

__all__ = ["RunCallbacks", "RunSummary", "submit"]


def __getattr__(name: str) -> object:
    # A job task or the router imports its own module of this package, and so this file:
    # it must not pull in the run (the pool, the model workers, PyTorch) with it.
    if name in __all__:
        from heygem_ray.driver import run

        return getattr(run, name)
    raise AttributeError(f"module 'heygem_ray.driver' has no attribute {name!r}")
