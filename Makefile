# hvd-alexnet. The two commands: `make train` (demo run) and `make test`.
# Every target installs what is missing first (make install: idempotent, quick when done).

# The stack: empty, TensorFlow 2.15.1 (the default); tf2.18, TensorFlow 2.18.1 with Keras 2
# (tf-keras), Horovod 0.28.1 built against it, in a .venv of its own (docs/install.md).
STACK           ?=
VENV            ?= $(if $(STACK),.venv-$(STACK),.venv)
PY              := $(VENV)/bin/python
# The TensorFlow requirements file: empty, the host's (the GPU stack where nvidia-smi lists
# GPUs, else the CPU one); CPU=1 the CPU stack on any host, GPU=1 the GPU one. A .venv
# built as one stack is switched to the other only when asked so.
TF_REQUIREMENTS ?=
CPU             ?=
GPU             ?=
NP              ?= 2
DEMO_DIR        ?= data/demo
BENCH_DIR       ?= data/bench
# The start-up rows' records: the photographs at ImageNet's average, ~110 KB a JPEG, in
# shards of ~700 records (ImageNet's hold 1,251).
STARTUP_DIR     ?= data/bench-110k
BENCH_ARGS      ?=
RUN_DIR         := $(or $(RUN_DIR),runs/demo-$(shell date +%Y%m%d-%H%M%S))
TRAIN_ARGS      ?=
PYTEST_ARGS     ?=
# Test files run on this many pytest workers, a file on one worker (its fixtures once):
# much of the suite waits (on signals, step delays, Slurm), so 3 overlap even on 2 cores.
TEST_WORKERS    ?= 3
CHAOS_ARGS      ?=
IMAGE           ?= hvd-alexnet

.PHONY: install test-deps lint lock train demo-data bench-data bench test chaos docker-build docker-base docker-test clean \
	gpu-check check-gpu-build bench-scaling

install:
	@TF_REQUIREMENTS=$(TF_REQUIREMENTS) CPU=$(CPU) GPU=$(GPU) STACK=$(STACK) VENV=$(VENV) \
	    bash scripts/install.sh

$(DEMO_DIR)/metadata.json:
	$(PY) -m hvd_alexnet data demo --output_dir $(DEMO_DIR)

demo-data: install
	@$(MAKE) --no-print-directory $(DEMO_DIR)/metadata.json

# The demo: AlexNet on the embedded digits data with $(NP) Horovod ranks (Gloo).
# A new run directory each time; pass RUN_DIR=runs/demo-... to resume one.
train: demo-data
	HVD_ALEXNET_RESUME="make train RUN_DIR=$(RUN_DIR) NP=$(NP)$(if $(TRAIN_ARGS), TRAIN_ARGS='$(TRAIN_ARGS)')" \
	$(PY) -m hvd_alexnet.tools.horovodrun -np $(NP) -H localhost:$(NP) --gloo \
	    $(PY) -m hvd_alexnet train --flagfile configs/demo.flags \
	    --data_dir $(DEMO_DIR) --model_dir $(RUN_DIR) $(TRAIN_ARGS)

# What only the tests need from the system (sshd, Slurm; as root): never part of install.
test-deps:
	@bash scripts/test_deps.sh

# What only the tests and the lint run (pytest, ruff, ...): into .venv, never by install.
$(VENV)/.test-tools: requirements-test.lock | install
	$(PY) -m pip install -q --disable-pip-version-check --require-hashes -r requirements-test.lock
	@touch $@

# The locks: every package, transitive ones included, pinned with its hashes, from the
# requirements files (pip-tools' pip-compile; several minutes, it asks PyPI for each).
# make install installs from requirements-cpu.lock or requirements-gpu.lock, make test
# adds requirements-test.lock. Run it after changing a requirements file.
LOCK_FLAGS      := --quiet --generate-hashes --allow-unsafe --strip-extras \
	--no-emit-index-url --no-emit-find-links
lock: install
	$(PY) -m pip install -q --disable-pip-version-check pip-tools==7.6.2
	for flavor in cpu gpu tf2.18-cpu tf2.18-gpu; do \
	    $(VENV)/bin/pip-compile $(LOCK_FLAGS) --output-file requirements-$$flavor.lock \
	        requirements-build.txt requirements.txt requirements-$$flavor.txt \
	        requirements-mpi.txt || exit 1; \
	done
	$(VENV)/bin/pip-compile $(LOCK_FLAGS) --output-file requirements-test.lock \
	    --constraint requirements-cpu.lock requirements-test.txt
	# tf2.21 serves Python 3.11 to 3.13 from one lock: uv's universal resolution writes
	# each package's pin for every Python, with its marker (numpy 1.26.4 below 3.13 ...).
	$(PY) -m pip install -q --disable-pip-version-check uv==0.13.8
	for flavor in tf2.21-cpu tf2.21-gpu; do \
	    $(VENV)/bin/uv pip compile --quiet --native-tls --universal --python-version 3.11 \
	        --generate-hashes --output-file requirements-$$flavor.lock \
	        requirements-build.txt requirements.txt requirements-$$flavor.txt \
	        requirements-mpi.txt || exit 1; \
	done

# pyflakes, pycodestyle's errors, import order and bugbear (pyproject.toml's [tool.ruff])
lint: $(VENV)/.test-tools
	$(VENV)/bin/ruff check .

test: install test-deps lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS)

$(BENCH_DIR)/metadata.json:
	$(PY) -m hvd_alexnet data photos --output_dir $(BENCH_DIR)

$(STARTUP_DIR)/metadata.json:
	$(PY) -m hvd_alexnet data photos --output_dir $(STARTUP_DIR) --photos_count 1500 \
	    --photos_quality 99 --train_shards 2 --validation_shards 1

bench-data: install
	@$(MAKE) --no-print-directory $(BENCH_DIR)/metadata.json $(STARTUP_DIR)/metadata.json

# Every throughput figure (about 35 minutes on 2 cores), written to docs/results/benchmarks.{md,json}.
bench: bench-data demo-data
	$(PY) -m hvd_alexnet bench --data_dir $(BENCH_DIR) --demo_dir $(DEMO_DIR) \
	    --startup_dir $(STARTUP_DIR) $(BENCH_ARGS)

# As root: 2 namespace hosts, 1 rank each, the link between them shaped to several
# rates with tc; measured images/s beside the planner's (7 minutes on 2 cores, 2026-12-06).
SCALING_ARGS    ?=
bench-scaling: install
	$(PY) -m hvd_alexnet.tools.scaling $(SCALING_ARGS)

# Horovod built with NCCL (its GPU all-reduce) into .venv-gpu, with TensorFlow's CUDA
# wheels, and `horovodrun --check-build` must list NCCL. Not part of `make test`: ~3 GB
# of downloads, 5 GB on disk. Needs an nvcc (docs/gpus.md: no CUDA 12 one on this machine).
check-gpu-build:
	@VENV=.venv-gpu TF_REQUIREMENTS=requirements-gpu.txt HOROVOD_GPU_OPERATIONS=NCCL \
	    bash scripts/install.sh

# On a GPU host: is the GPU path ready, and how fast (a few minutes; the demo's records
# for the check that the trainer's batches land on each GPU).
# Without a GPU it runs the same on the CPU and says so.
GPU_CHECK_ARGS  ?=
gpu-check: demo-data
	bash bin/gpu_check.sh --data_dir=$(DEMO_DIR) $(GPU_CHECK_ARGS)

# Not part of `make test`: random rank kills and preemptions in a 2-rank demo
# run, restarted from its checkpoints, compared with an uninterrupted run (~10 min).
chaos: demo-data
	$(PY) -m hvd_alexnet.tools.chaos --data_dir $(DEMO_DIR) $(CHAOS_ARGS)

# The GPU image (CUDA 12.2, cuDNN 8.9, NCCL) and the CPU image; both run as user hvd.
# BASE_IMAGE=... builds the CPU image on another base (make docker-base's, say).
docker-build:
	docker build -f docker/Dockerfile -t $(IMAGE):gpu .
	docker build $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
	    -f docker/Dockerfile.cpu -t $(IMAGE):cpu .

# As root, for a host that reaches no image registry: a Debian 12 base image made
# here with debootstrap from the machine's apt source (hvd-alexnet-base:bookworm).
docker-base:
	@bash scripts/docker_base.sh

# As root, not part of `make test` (25 to 35 minutes on 2 cores, docs/install.md):
# builds the CPU image and docker/Dockerfile's stages on a CPU base, runs `make test`
# in the CPU image and the demo in the other. Starts (and then stops) a Docker engine
# with no bridge network if none runs; every build and run uses --network=host.
docker-test:
	@IMAGE=$(IMAGE) PYTEST_ARGS="$(PYTEST_ARGS)" bash scripts/docker_test.sh

# Caches only. Never a run: runs/ holds every launch script's checkpoints by default, and
# the demo's; remove a run by its own folder (rm -r runs/demo-...) when you mean to.
clean:
	rm -rf .pytest_cache
	find hvd_alexnet tests -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
