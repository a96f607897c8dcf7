VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test demo lint system-deps csi-sanity proto manifests bench stress image e2e e2e-up e2e-down clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

system-deps:
	tools/system-deps

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	$(VENV)/bin/lint-imports

# csi-sanity, built once per version into a cache outside the repository (exit 3: no Go, the test skips)
csi-sanity:
	tools/csi-sanity >/dev/null || [ $$? = 3 ]

test: $(STAMP) system-deps lint csi-sanity
	$(VENV)/bin/pytest -q -ra

demo: $(STAMP) system-deps
	$(PY) -m demo

proto: $(STAMP)
	$(PY) tools/gen-proto

bench: $(STAMP) system-deps
	$(PY) -m bench.bench_core
	$(PY) -m bench.bench_grpc
	$(PY) -m bench.bench_scrape
	$(PY) -m bench.bench_goals
	$(PY) -m bench.bench_parts
	$(PY) -m bench.bench_quota
	$(PY) -m bench.bench_tuning
	$(PY) -m bench.bench_transfer
	$(PY) -m bench.bench_peer

stress: $(STAMP) system-deps
	BTRFS_CSI_STRESS=1 $(VENV)/bin/pytest -q -ra tests/stress
	$(PY) -m bench.bench_scale

manifests: $(STAMP)
	tools/render-manifests

image:
	docker build -t btrfs-csi:dev .

# The e2e suite on a real cluster (kind, else a local Kubernetes built from source): up, scenarios,
# down (also on failure). e2e-up leaves the local cluster running with the chart installed.
e2e: $(STAMP) system-deps
	tests/e2e/run.sh

e2e-up: $(STAMP) system-deps
	tools/e2e/prepare
	$(PY) -m tests.e2e.local_cluster up

e2e-down: $(STAMP)
	$(PY) -m tests.e2e.local_cluster down

clean:
	rm -rf $(VENV) build *.egg-info
