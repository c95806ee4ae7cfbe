"""One job: a manifest row rendered to its MP4, the numbered recipe free of Ray.

* ``recipe``: ``render_job``, the steps in order, each one named call;
* ``context``: what the job carries from step to step, and the clock that times them;
* ``reference``: what the workers get per reference frame (crops, or a pack's
  reference-stage outputs cached with the template);
* ``compose``: chunks sent ahead to the workers, their crops pasted back and encoded;
* ``service``: the model service a job is given (Ray's, or one in this process);
* ``scratch``: the job's scratch folder.
"""

from heygem_ray.job.recipe import render_job
from heygem_ray.job.service import ChunkFuture, InProcessService, ModelService, ReferenceFuture

__all__ = ["ChunkFuture", "InProcessService", "ModelService", "ReferenceFuture", "render_job"]
