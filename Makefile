# The two entry points the README starts with: `make demo` (the main job) and `make test`.
CARGO ?= cargo
HYBRID := target/release/hybrid

.PHONY: demo test build fetch lint bench-cpu fixtures pydeps

build:
	$(CARGO) build --release

fetch: build
	$(HYBRID) fetch

# The main job: fetch the default model, build, convert it into a hybrid with learned layer
# placement (quick preset: 2 FA + 4 SWA of 30 layers, the rest GDN; resumes if interrupted),
# print the report, and chat-generate with the teacher.
DEMO_DIR ?= out/convert-quick
demo: fetch
	$(HYBRID) convert --budget fa=2,swa=4 --preset quick --out $(DEMO_DIR)
	cat $(DEMO_DIR)/report.md

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings

# Unit, property and integration tests (the model-level ones need the fetched model).
test: fetch pydeps
	$(CARGO) test --release --workspace

# The server tests drive the server with the official OpenAI Python client.
pydeps:
	python3 -c 'import openai' 2>/dev/null || python3 -m pip install -q openai || python3 -m pip install -q --break-system-packages openai

# hybrid and llama.cpp side by side (needs llama-cpp-python; see ../shared/peers/README.md).
bench-cpu: build
	python3 scripts/bench-llamacpp.py --out bench/decode-cpu.json

# Regenerates the committed test fixtures (needs llama-cpp-python, gguf, safetensors, jinja2).
fixtures: fetch
	python3 scripts/make-gguf-fixtures.py
	python3 scripts/make-llamacpp-fixtures.py
	HYBRID_FIXTURE_DECODE=1 python3 scripts/make-llamacpp-fixtures.py
