# `make repro` runs the pipeline, `make test` runs the tests; both set everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
DEBIAN_DATA := /usr/share/datasets/fashion-mnist

OFFLINE_PLOTS := build/dvc_plots_template.html

.PHONY: repro study tune docs test test-study test-fast bench lint data browser setup mlflow-ui exp-show clean

# params.yaml is checked first: DVC compares params with `==`, so `epochs: true` after `epochs: 1` would
# pass as "up to date" (see src/fashion_compare/params.py).
repro: setup data
	$(BIN)/python -m fashion_compare.params params.yaml
	$(BIN)/dvc repro

# The seed study: the pipeline once per seed of study.seeds (or SEEDS="3 4": a slice, for one machine of a
# team), JOBS at a time, then metrics/study.json and plots/study/ once every seed has its results.
# CLUSTER=tcp://host:8786 (or DASK_SCHEDULER_ADDRESS): each missing seed a task on that Dask cluster.
# RECIPE=tuned: the same study of each model's tuned recipe (make tune's metrics/tuning/recipe.yaml), in
# metrics/study_tuned/ and plots/study_tuned/: first its pilot (the first five of study.seeds), then the seeds
# its committed aggregate holds; SEEDS="47 48" adds seeds to it (the plan's second stage). RECIPE=tuned_subset:
# the study of the first search's recipes (metrics/tuning_subset/recipe.yaml), kept in metrics/study_tuned_subset/.
SEEDS ?=
JOBS ?=
CLUSTER ?=
RECIPE ?= reference
RERUN_STALE ?=
study: setup data
	$(BIN)/python -m fashion_compare.params params.yaml
	$(BIN)/python stages/study.py all --recipe $(RECIPE) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(JOBS),--jobs $(JOBS)) \
		$(if $(CLUSTER),--cluster $(CLUSTER)) $(if $(RERUN_STALE),--rerun-stale)

# Tuning: one seeded search of every compared model's recipe (or MODELS=a,b), the same configurations for each,
# successive halving over epochs on the full training split, scored on validation (params.yaml `tune`); trials
# JOBS at a time as Dask tasks (or on CLUSTER); run again, it goes on where it stopped. Results in
# metrics/tuning/ and plots/tuning/.
tune: setup data
	$(BIN)/python -m fashion_compare.params params.yaml
	$(BIN)/dvc repro prepare
	$(BIN)/python stages/tune.py $(if $(JOBS),--jobs $(JOBS)) $(if $(CLUSTER),--cluster $(CLUSTER)) \
		$(if $(MODELS),--models $(MODELS))

# README.md and docs/*.md rendered from docs/templates/ and the committed results: every measured figure there is
# an expression naming its file and field (src/fashion_compare/docs.py); `make test` fails on a stale one.
docs: setup
	$(BIN)/python -m fashion_compare.docs

# Every test, on as many pytest-xdist workers as there are cores (they share the cores: tests/conftest.py).
# The virtualenv and Debian's packages are set up side by side (a sub-make with jobs: `make -j` for every
# target would also run `make repro study` at once, two trainings on the same cores).
test:
	@$(MAKE) --no-print-directory --jobs=3 setup data browser
	$(BIN)/ruff check .
	$(BIN)/pytest -q -n auto -m "not study and not cluster and not long"

# The longest tests end to end, one at a time: the seed studies (split over three clones, a killed driver, on a
# Dask cluster of a scheduler and two workers: minutes, several smoke seeds each), a second clone pulling what
# the first pushed to the team's DVC remote, a training SIGKILLed mid-epoch then resumed, one restarted after
# its config changed, a queued experiment running its own code; CI runs them after `make test`, which they
# would make minutes longer.
test-study: setup data
	$(BIN)/pytest -q -m "study or cluster or long"

# The inner loop: the tests that run no pipeline, on as many workers as there are cores.
test-fast: setup data
	$(BIN)/pytest -q -n auto -m "not e2e"

# The training and inference benchmarks, each runnable alone; the data they measure is prepared first (DVC's
# prepare stage). Every figure goes to metrics/benchmark.json as soon as it is measured. The study's
# benchmarks (queue_workers.py, study_workers.py, study_aggregate.py) run on their own: see docs/performance.md.
bench: setup data
	test -d data/prepared || $(BIN)/dvc repro prepare
	$(BIN)/python benchmarks/training_speed.py
	$(BIN)/python benchmarks/resnet_speedups.py
	$(BIN)/python benchmarks/compute.py
	$(BIN)/python benchmarks/stage_costs.py
	$(BIN)/python benchmarks/precision.py

lint: setup
	$(BIN)/ruff check .

setup: $(VENV)/.installed $(OFFLINE_PLOTS)

# uv installs the pinned packages (several GB: torch's CUDA build) in parallel, faster than pip (measured in
# docs/performance.md). It reads UV_INDEX_URL / UV_EXTRA_INDEX_URL, not pip's configuration. Bytecode is
# compiled at install, as pip does: with PYTHONDONTWRITEBYTECODE set, every process would compile torch's and
# MLflow's modules again (each stage's start-up twice as long).
UV_VERSION := 0.13.9
$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[dev]'
	touch $@

# `dvc plots show` pages that render offline: Vega inlined, set as this clone's html_template.
$(OFFLINE_PLOTS): $(VENV)/.installed
	$(BIN)/python -c "from fashion_compare.plots import write_offline_html_template as w; w('$@')"
	$(BIN)/dvc config --local plots.html_template ../$@

# The raw data: Debian's package when we may install it; otherwise the prepare stage looks in
# data.raw_dir and falls back to downloading from the official mirror.
data:
	@if [ ! -d $(DEBIAN_DATA) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null); \
	fi
	@if [ -d $(DEBIAN_DATA) ]; then echo "raw data: $(DEBIAN_DATA)"; \
	else echo "raw data: not installed system-wide; the prepare stage will use data/raw or download it"; fi

# Headless Chromium, for the test that dvc plots render offline (after `data`: one apt-get at a time).
browser: data
	@if ! command -v chromium >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -q chromium >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null); \
	fi

# The headline of every experiment (both models' accuracy and macro F1, the gain with its CI, McNemar's p,
# the verdict) and the params a grid usually varies; the detail metrics files are left out.
EXP_SHOW_KEEP := Experiment|^models\.[a-z0-9_]+\.(test_accuracy|macro_f1)$$|^contenders\.[a-z0-9_]+\.(accuracy_gain|mcnemar_p|decision|p_gain_at_least_margin)$$|^lr$$|^compare\.contenders$$|^models\.[a-z0-9_]+\.recipe\.(lr|epochs|batch_size)$$
exp-show: setup
	$(BIN)/dvc exp show --md --drop '.*' --keep '$(EXP_SHOW_KEEP)'

PORT ?= 5000
mlflow-ui: setup
	@MLFLOW_TRACKING_URI= $(BIN)/python -m fashion_compare.mlflow_store \
		"$$($(BIN)/python -c 'import yaml; print(yaml.safe_load(open("params.yaml"))["tracking"]["experiment"])')" $(PORT)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db \
		--host 127.0.0.1 --port $(PORT)

clean:
	rm -rf $(VENV)
