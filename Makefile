# make demo : set up .venv (if missing) and run synth -> train -> eval -> export -> infer on the CPU
# make test : set up .venv (if missing) and run the whole test suite
# Both install every extra that installs from pip here (pyproject.toml: the core runs inference only;
# ort-gpu and trt are left out: onnxruntime-gpu replaces the core's onnxruntime, TensorRT is not on pip here).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CLI    := $(PY) -m dronseg_edge
STAMP  := $(VENV)/.installed
EXTRAS ?= train,export,video,dev
CONSTRAINTS ?=
DEMO   ?= runs/demo

.PHONY: install test test-oldest demo clean gpu-check jetson-deps

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e ".[$(EXTRAS)]" $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
	touch $(STAMP)

install: $(STAMP)

# The suite runs in TEST_WORKERS processes (pytest-xdist), a test file to a worker at a time, each with one
# OpenMP/torch thread: on CI's 2 cores that took 298 s where one process took 497 s (2026-12-07); two workers
# with torch's two threads each took 527 s (the threads spin against each other). TEST_WORKERS=0: one process.
# pytest exits 5 when it collects no tests; that is not a failure of the suite.
TEST_WORKERS ?= 2
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile; rc=$$?; \
		if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

# make test-oldest: the suite in .venv-oldest on a Jetson's Python (3.10) with the oldest versions the
# package declares (tools/oldest-constraints.txt; README, "What was verified how"). Not part of CI.
OLDEST_PYTHON ?= python3.10
test-oldest:
	$(MAKE) test VENV=.venv-oldest PYTHON=$(OLDEST_PYTHON) CONSTRAINTS=tools/oldest-constraints.txt

# make gpu-check: every GPU path in at most 5 minutes (stages under their own timeouts, results in
# benchmarks/results/gpu-check-<gpu>-<date>/); without a GPU the same stages at tiny sizes on the CPU.
# No $(STAMP) prerequisite: the GPU machine has torch but no .venv and no network, so this uses .venv
# where there is one and the machine's python3 otherwise. Options: GPU_CHECK_ARGS="--cpu --only latency ...".
GPU_CHECK_PY   ?= $(shell test -x $(PY) && echo $(PY) || echo $(PYTHON))
GPU_CHECK_ARGS ?=
gpu-check:
	PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" $(GPU_CHECK_PY) -m benchmarks.gpu_check $(GPU_CHECK_ARGS)

# make jetson-deps: does every install set resolve for a Jetson (JetPack 6: Python 3.10, aarch64) without
# x86-only wheels? pip dry-runs against the package index (network; a few minutes). docs/jetson.md.
jetson-deps: $(STAMP)
	$(PY) tools/check_jetson_deps.py

demo: $(STAMP)
	rm -rf $(DEMO)
	$(CLI) synth $(DEMO)/data --images 64 --size 320x192 --video-frames 60 --seed 0
	$(CLI) train --data $(DEMO)/data --model lraspp_mobilenet_v3_large --weights none --size 320x192 \
		--epochs 30 --batch 8 --optimizer adamw --lr 0.005 --bn-momentum 0.1 --workers 2 --val-at-start \
		--out $(DEMO)/train
	$(CLI) eval $(DEMO)/train/weights/best.pt --split val --workers 0
	$(CLI) export $(DEMO)/train/weights/best.pt --precision fp32 --out $(DEMO)/export
	$(CLI) infer $(DEMO)/export/best_fp32.onnx $(DEMO)/data/video.mp4 --save-masks --out $(DEMO)/infer
	$(CLI) bench $(DEMO)/train/weights/best.pt $(DEMO)/export/best_fp32.onnx --iters 20 --json $(DEMO)/bench.json
	@echo
	@echo "demo results under $(DEMO)/:"
	@echo "  data/     synthetic data set (Kaggle layout) + video.mp4"
	@echo "  train/    weights/best.pt, metrics.csv, curves.png, per_class.png, confusion_matrix.png"
	@echo "  export/   best_fp32.onnx + best_fp32.parity.json"
	@echo "  infer/    overlay video, masks/, stats.jsonl, summary.json"
	@echo "  bench.json latency of the checkpoint and the ONNX file on this machine"

clean:
	rm -rf $(VENV) .venv-oldest runs .pytest_cache build *.egg-info
