#!/usr/bin/env bash
# The wgpu backend on a real GPU: lists the adapters, validates the committed models on all
# 10,000 Fashion-MNIST test images against the CPU engine with both 2-bit dot kernels (the
# ResNet-20, and the MobileNetV2 with its depthwise convs once examples/ holds it), and runs
# the wgpu bench. Needs prebuilt binaries (no cargo, no libtorch build on the GPU machine):
#
#   cargo build --release --bin nce && cargo bench --bench wgpu --no-run   # on the build machine
#   scripts/device-wgpu-check.sh [NCE_BIN] [BENCH_BIN]
#
# NCE_BIN defaults to target/release/nce, BENCH_BIN to the newest target/release/deps/wgpu-*
# executable. Run from the repository root (it reads examples/ and data/). The binaries link
# libtorch's CPU library (default features): copy third_party/libtorch along, or build them
# with `--no-default-features --features cli,wgpu`. NCE_WGPU_ADAPTER picks an adapter
# (default: the best, a discrete GPU first). Everything is printed; the exit status is
# nonzero if any logit differs.
set -uo pipefail
cd "$(dirname "$0")/.."
NCE_BIN=${1:-target/release/nce}
BENCH_BIN=${2:-$(ls -t target/release/deps/wgpu-* 2>/dev/null | grep -v '\.d$' | head -n1)}
# The first is required; the others are validated when committed.
MODELS=(examples/resnet20-w2a2-fashion.nce examples/mobilenetv2-w2a2-fashion.nce)
status=0

echo "== machine"
uname -a
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "(no nvidia-smi)"
command -v vulkaninfo >/dev/null && vulkaninfo --summary 2>&1 | head -n 40

echo "== nce adapters"
"$NCE_BIN" adapters || status=1

for model in "${MODELS[@]}"; do
    if [ ! -f "$model" ]; then
        if [ "$model" = "${MODELS[0]}" ]; then
            echo "== $model: missing"
            status=1
        else
            echo "== $model: not committed yet, skipped"
        fi
        continue
    fi
    for dot in shift dot4; do
        echo "== nce validate $model --backend wgpu (NCE_WGPU_DOT=$dot)"
        start=$(date +%s.%N)
        NCE_WGPU_DOT=$dot "$NCE_BIN" validate "$model" --data fashion-mnist --backend wgpu ${NCE_WGPU_ADAPTER:+--adapter "$NCE_WGPU_ADAPTER"} || status=1
        echo "wall time: $(awk -v a="$start" -v b="$(date +%s.%N)" "BEGIN{printf \"%.1f\", b-a}") s"
    done
done

echo "== wgpu bench ($BENCH_BIN)"
if [ -n "$BENCH_BIN" ] && [ -x "$BENCH_BIN" ]; then
    for n in 1000 10000; do
        NCE_BENCH_IMAGES=$n "$BENCH_BIN" || status=1
    done
else
    echo "no bench binary: pass its path as the second argument"
    status=1
fi
exit $status
