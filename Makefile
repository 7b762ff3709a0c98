# make train  - set up .venv (first time; CPU wheels without a GPU) and train SimpleCNN on CIFAR-10 (downloads it into ./data)
# make test   - set up .venv (first time) and run the test suite (CPU only, about 19 minutes on 2 cores)
# make lint   - ruff format --check and ruff check at 120 columns (CI runs it before the tests)
# make smoke  - a 1-epoch CPU run on a small subset, to see the whole pipeline work
# make bench  - the throughput benchmark against the seed recipe (bench/train_throughput.py)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lab2-installed
TEST_STAMP := $(VENV)/.lab2-test-installed
MINI := ../shared/data/cifar10-mini

# GPU when one is visible, else the CPU in fp32 (see docs/running.md: bf16 is only fast on CPUs with AMX).
HAVE_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
TRAIN_CONFIG ?= $(if $(HAVE_GPU),accelerate_configs/single_gpu_bf16.yaml,accelerate_configs/cpu.yaml)
DATA_DIR ?= ./data
TRAIN_ARGS ?=
# The smoke run uses the real mini slice when it is there, synthetic data otherwise.
SMOKE_DATA := $(if $(wildcard $(MINI)/cifar-10-batches-py),--data_dir $(MINI),--dataset fake)
# Open MPI (TRAIN_CONFIG=accelerate_configs/multi_cpu.yaml) refuses to start as root unless both are set;
# containers often run as root. They change nothing for other users, so they are set only for root.
ifeq ($(shell id -u),0)
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
endif
# Open MPI's hardware discovery (hwloc's GL plugin) probes X displays on TCP ports 6000-6063 and hangs for good,
# SIGTERM ignored, while anything listens there: TensorBoard's 6006. Without the plugin nothing else changes.
export HWLOC_COMPONENTS ?= -gl

.PHONY: install cpu-torch train smoke readme-samples test lint bench clean

# Training needs the package alone; the tests and the linter add the [test] extra on top.
# Without a GPU, PyTorch's CPU wheels come first (cpu-torch), so the install below finds torch there and does not
# fetch CUDA's: about 1 GB of .venv instead of 6.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(HAVE_GPU),,$(MAKE) --no-print-directory cpu-torch)
	$(BIN)/python -m pip install -q -e .
	touch $@

# One try with a short time-out and no retries, so an index that cannot be reached costs seconds, not pip's retry
# storm. The pair must also import together: pip's find-links or extra indexes (a local wheel cache) can pair a CPU
# torch with a CUDA torchvision whose ops do not load ("operator torchvision::nms does not exist"). Otherwise both
# go and the default index supplies torch (the next pip install), and one line says so.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
cpu-torch:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "no GPU seen: installing PyTorch's CPU wheels from $(TORCH_CPU_INDEX)"
	@$(BIN)/python -m pip install -q --retries 0 --timeout 10 --index-url $(TORCH_CPU_INDEX) torch torchvision \
		>/dev/null 2>&1 && $(BIN)/python -c 'import torchvision.ops' >/dev/null 2>&1 \
		|| { $(BIN)/python -m pip uninstall -q -y torch torchvision >/dev/null 2>&1; \
		echo "note: no working torch + torchvision pair from PyTorch's CPU wheel index ($(TORCH_CPU_INDEX));" \
		"installing torch from the default index instead (with CUDA: about 6 GB)."; }

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(STAMP)

# Ctrl-C reaches make, the launcher and lab2 together. The launcher ignores it (its subshell's trap '' INT) and
# waits for lab2, which saves a checkpoint and prints how to resume (LAB2_LAUNCHED_BY=make: in make's words).
# Make waits for the recipe; after a Ctrl-C the recipe exits 0 so make adds no "Error" line under lab2's
# message, and make then ends itself by SIGINT (status 130), so the stop still counts as a failure.
# One CPU process: the threads Accelerate would pick itself (physical cores), given explicitly so that it does not
# print its 3-line "--num_cpu_threads_per_process was set" warning (a config file cannot hold the value).
CPU_THREADS = $(shell $(BIN)/python -c 'import psutil; print(psutil.cpu_count(logical=False) or 1)' 2>/dev/null || echo 1)
ONE_CPU_PROCESS = $(if $(filter %/cpu.yaml %/cpu_bf16.yaml,$(1)),--num_cpu_threads_per_process $(CPU_THREADS))
TRAIN_CMD = $(BIN)/accelerate launch --quiet --config_file $(TRAIN_CONFIG) $(call ONE_CPU_PROCESS,$(TRAIN_CONFIG)) \
	train_accelerate.py --data_dir $(DATA_DIR) $(TRAIN_ARGS)
train: $(STAMP)
	$(info $(TRAIN_CMD))
	@ctrl_c=0; trap 'ctrl_c=1' INT; \
	(trap '' INT; LAB2_LAUNCHED_BY=make exec $(TRAIN_CMD)); status=$$?; \
	[ $$ctrl_c = 1 ] || exit $$status

smoke: $(STAMP)
	$(BIN)/accelerate launch --quiet --config_file accelerate_configs/cpu.yaml \
		$(call ONE_CPU_PROCESS,accelerate_configs/cpu.yaml) train_accelerate.py \
		$(SMOKE_DATA) --num_train_epochs 1 --max_train_samples 2048 --output_dir runs/smoke --overwrite_output_dir

# The lab2-eval and lab2-predict samples in docs/commands.md, regenerated from the smoke run on the real mini slice.
# make expands the whole recipe first, so a missing slice stops it before the smoke run (which would use fake data).
readme-samples: $(STAMP)
	$(if $(wildcard $(MINI)/cifar-10-batches-py),,$(error readme-samples needs the real mini slice at $(MINI)))
	$(MAKE) --no-print-directory smoke
	$(BIN)/python docs/readme_samples.py --run runs/smoke --data_dir $(MINI)

# Two workers, one per core: conftest.py gives each, and every program a test starts, one thread (about 14 minutes here).
test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist worksteal

# ruff at 120 columns (pyproject.toml): the formatter's check, then the linter. CI runs it before the tests.
lint: $(TEST_STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/train_throughput.py

# Only what make itself writes: the test cache and the smoke run. Trained runs in runs/ are yours to delete.
clean:
	rm -rf .pytest_cache runs/smoke
