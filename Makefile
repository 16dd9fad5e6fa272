# busdx: `make run` serves the web app with the bundled models; `make test` runs the fast test tier
# (lint included); `make reproduce` runs the full-data tier. tests/README.md says which is which.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
DATA   ?= ../shared/data/busbra
# the full-data tier reads BUSDX_DATA when it is set, else DATA
BUSDX_DATA ?= $(abspath $(DATA))
PYTEST := $(BIN)/python -m pytest -q -ra --durations=20

.PHONY: install install-train run test reproduce lint chromium dicom-tools container check preview report benchmark clean

# The serving set only: numpy, pillow, opencv, onnxruntime, fastapi... no torch.
install: $(VENV)/.serve
$(VENV)/.serve: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

# Training, evaluation and development: adds torch (CPU use is fine), timm, smp, pytest, and Ray
# (its tests run in the fast tier)...
install-train: $(VENV)/.train
$(VENV)/.train: $(VENV)/.serve
	$(BIN)/python -m pip install -q -e '.[train,dev,ray]'
	touch $@

run: install
	$(BIN)/busdx serve --host $(HOST) --port $(PORT)

# Debian's chromium drives the browser test; installed here when missing (needs root and apt).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing chromium with apt"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "chromium could not be installed: the browser test will be skipped"; \
	  else echo "chromium missing and cannot be installed here: the browser test will be skipped"; fi; }

# Debian's DICOM tools for the DICOM tests: dciodvfy (dicom3tools) checks the SR and SEG written,
# Orthanc with its DICOMweb plugin is the PACS of the round-trip test.
dicom-tools:
	@command -v dciodvfy >/dev/null 2>&1 && command -v Orthanc >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing dicom3tools, orthanc and orthanc-dicomweb with apt"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      dicom3tools orthanc orthanc-dicomweb >/dev/null) \
	      || echo "the DICOM tools could not be installed: their tests will be skipped"; \
	  else echo "dciodvfy or Orthanc missing and cannot be installed here: their tests will be skipped"; fi; }

lint: install-train
	$(BIN)/ruff check src tests benchmarks studies tools

# The fast tier: no full dataset, no study re-run over hundreds of images. At most 10 minutes,
# on every core.
test: install-train chromium dicom-tools lint
	$(PYTEST) -m "not full_data" -n auto

# The full-data tier: the bundled models' published numbers, the studies' re-runs, anything that
# scores hundreds of images. At most 25 minutes. A missing dataset or model fails it.
reproduce: install-train
	@test -f "$(BUSDX_DATA)/bus_data.csv" || { echo "make reproduce needs the complete BUS-BRA \
	dataset: no bus_data.csv in $(BUSDX_DATA). Set DATA=... (or BUSDX_DATA=...) to its folder."; exit 2; }
	BUSDX_DATA="$(BUSDX_DATA)" BUSDX_TESTS_STRICT=1 $(PYTEST) -m full_data -n auto --maxschedchunk 1

# The serving image (deploy/Containerfile: ONNX Runtime, no torch, the bundled models), built with
# podman on a Debian base made by debootstrap (no registry needed), then smoke-tested: ready, 401
# without a token, an analysis with one, /metrics, the health check, no torch. Needs root.
container: install
	@command -v podman >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 || { \
	  echo "installing podman, runc and debootstrap with apt"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    podman runc debootstrap >/dev/null; }
	deploy/base-image.sh
	PYTHON=$(BIN)/python deploy/build.sh
	deploy/smoke.sh

check: install
	$(BIN)/busdx data check --data $(DATA)

preview: install
	$(BIN)/busdx data preview --data $(DATA) --out reports/data_preview.png

report: install-train
	$(BIN)/busdx report --data $(DATA) --out reports/

benchmark: install-train
	$(BIN)/python benchmarks/run.py --data $(DATA)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-output
