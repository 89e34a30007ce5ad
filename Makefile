# Thin wrapper over CMake. `make demo` trains on Fashion-MNIST; `make test` builds and runs the suite.
# Both install missing Debian packages first (scripts/install-deps.sh, needs root when something is missing).
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
ifeq ($(CI),true)
  CMAKE_FLAGS += -DSHIFTQ_WERROR=ON
endif

.PHONY: deps configure build demo gpt-demo mnist-demo test bench clean

deps:
	./scripts/install-deps.sh

configure: deps
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

# ResNet-20 on Fashion-MNIST, one epoch of 4-bit integer training (a few minutes on 2 cores).
DEMO_ARGS ?= --epochs 1 --bits 4 --norm l1
demo: configure
	cmake --build $(BUILD_DIR) -j $(JOBS) --target shiftq-train-resnet
	$(BUILD_DIR)/examples/shiftq-train-resnet $(DEMO_ARGS)

# A character-level GPT on the King James Bible (Debian's bible-kjv), 6-bit integer training.
GPT_ARGS ?= --steps 300 --bits 6 --norm l1
gpt-demo: configure
	cmake --build $(BUILD_DIR) -j $(JOBS) --target shiftq-train-gpt
	test -f kjv.txt || ./scripts/prepare-kjv.sh kjv.txt
	$(BUILD_DIR)/examples/shiftq-train-gpt --data kjv.txt --checkpoint gpt.safetensors $(GPT_ARGS)
	$(BUILD_DIR)/examples/shiftq-train-gpt --sample 300 --load gpt.safetensors --prompt "And God said"

mnist-demo: configure
	cmake --build $(BUILD_DIR) -j $(JOBS) --target shiftq-demo-mnist
	$(BUILD_DIR)/examples/shiftq-demo-mnist $(MNIST_ARGS)

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS)

bench: configure
	cmake --build $(BUILD_DIR) -j $(JOBS) --target bench_gemm
	$(BUILD_DIR)/bench/bench_gemm --benchmark_repetitions=5 --benchmark_report_aggregates_only=true

clean:
	rm -rf $(BUILD_DIR)
