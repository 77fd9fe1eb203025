#!/usr/bin/env bash
# Stage the wheels `make gpu-check` needs on the GPU machine (Python 3.12, x86-64, no package
# registry, at most 64 MiB carried per call) into .carry/ (git-ignored), and print the device calls.
#
#   tools/stage_gpu_wheels.sh             # small wheels only: .carry/wheels/
#   tools/stage_gpu_wheels.sh --ort-gpu   # also onnxruntime-gpu (255 MB) in 56 MB parts: .carry/partN/chunk
#                                         # (5 back-to-back calls: not for a 15-minute lease, benchmarks/README.md)
#
# .carry/wheels/ holds what the GPU machine lacks (FACTS.md section 3): iterative-stratification
# (the train/validation split of the export tests' fixture) and onnxslim (ONNX export). gpu-check
# installs each only where its distribution is missing, into a private folder on PYTHONPATH.
# onnxruntime-gpu is cut into parts by ../shared/tools/wheel-chunks (which empties .carry/ first, so
# it runs first here); .carry/wheels/ort-gpu-parts.json records the part count and checksum, and
# gpu-check reassembles the parts from /tmp/carry/NN (copied by earlier calls) or .carry/partN/chunk
# and installs the wheel with pip --target, leaving the machine's CPU onnxruntime untouched.
set -euo pipefail
ORT_GPU_VERSION=${ORT_GPU_VERSION:-1.31.1}
SMALL_WHEELS=${SMALL_WHEELS:-"iterative-stratification==0.1.9 onnxslim==0.1.98"}
root=$(git rev-parse --show-toplevel)
cd "$root"
WHEEL_CHUNKS=${WHEEL_CHUNKS:-$root/../shared/tools/wheel-chunks}
mkdir -p "$(git rev-parse --git-path info)"  # wheel-chunks appends to .git/info/exclude

parts=0
if [ "${1:-}" = "--ort-gpu" ]; then
  [ -x "$WHEEL_CHUNKS" ] || { echo "error: $WHEEL_CHUNKS not found (set WHEEL_CHUNKS=PATH)" >&2; exit 2; }
  out=$("$WHEEL_CHUNKS" "onnxruntime-gpu==$ORT_GPU_VERSION")
  sha=$(printf '%s\n' "$out" | sed -n 's/.*tar sha256 \([0-9a-f]\{64\}\).*/\1/p')
  parts=$(find .carry -maxdepth 1 -name 'part*' -type d | wc -l)
  [ -n "$sha" ] && [ "$parts" -ge 1 ] || { printf '%s\n' "$out" >&2; echo "error: wheel-chunks gave no parts" >&2; exit 1; }
elif [ -n "${1:-}" ]; then
  echo "usage: $0 [--ort-gpu]" >&2; exit 2
else
  rm -rf .carry/wheels
fi

mkdir -p .carry/wheels
# shellcheck disable=SC2086  # SMALL_WHEELS is a list of requirement strings
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .carry/wheels $SMALL_WHEELS
if [ "$parts" -ge 1 ]; then
  printf '{"wheel": "onnxruntime-gpu==%s", "parts": %d, "sha256": "%s"}\n' "$ORT_GPU_VERSION" "$parts" "$sha" \
    > .carry/wheels/ort-gpu-parts.json
fi

echo "Staged in .carry/wheels ($(du -sh .carry/wheels | cut -f1)):"
ls -1 .carry/wheels | sed 's/^/  /'
echo
echo "Device calls (back to back: the machine stays warm ~30 s after a call, and /tmp/carry with it):"
for i in $(seq 1 $((parts - 1))); do
  printf '  run  command: mkdir -p /tmp/carry && cp .carry/part%d/chunk /tmp/carry/%02d\n       carry: [".carry/part%d"]  timeout_s: 60\n' "$i" "$i" "$i"
done
last=""
[ "$parts" -ge 1 ] && last=", \".carry/part$parts\""
cat <<EOF
  run  command: if command -v make >/dev/null; then make gpu-check GPU_CHECK_ARGS="--bundle \$OUT"; else PYTHONPATH=. python3 -m benchmarks.gpu_check --bundle "\$OUT"; fi
       carry: [".carry/wheels"$last]  timeout_s: 330
EOF
echo "(the last part, if any, travels with the gpu-check call itself: gpu-check also looks in .carry/partN/chunk)"
