# Two commands do all set-up on a fresh machine:
#   make demo   classify the bundled cricket clip with the real Kinetics-400 weights (fetched and converted once)
#   make test   run the linters and the test suite (CI runs this too, through .ci/run)
VENV ?= .venv
PY := $(VENV)/bin/python

# The package and what it needs at run time, nothing more (no TensorFlow): enough for the demo.
$(VENV)/.base: pyproject.toml
	python3 -m venv $(VENV)
	# Pin the CPU build that lies on these machines' disk; an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e .
	touch $@

# The development extras: pytest, the TF reference, plotting, export, ruff and import-linter.
$(VENV)/.dev: $(VENV)/.base
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.dev

# The bundled clip is already DeepMind-preprocessed (short side 256, centre crop 224), so it is used as it
# is (--short-side 224) rather than upsampled again.
demo: $(VENV)/.base
	$(VENV)/bin/i3d-torch predict i3d_torch/assets/v_CricketShot_g04_c01_rgb.gif --short-side 224 --top 5

# Style (ruff) and the layers of docs/architecture.md (import-linter's contracts in pyproject.toml).
lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest -q

.PHONY: install demo lint test
