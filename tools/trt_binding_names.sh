#!/usr/bin/env bash
# Regenerate tests/export/data/tensorrt-<version>-names.txt: every identifier-like token in the
# TensorRT Python bindings of each version, for the name-check test (tests/export/test_tensorrt_names.py).
#
# The bindings wheels are small (~1.3 MB) and real, but their tensorrt.so cannot be imported here
# (the CUDA/TensorRT libraries are missing), so the names are read with `strings` instead:
#   - tokens of the .so (pybind11 registers every bound name as a C string),
#   - identifiers of the package's __init__.py (__version__, nptype, volume are defined in Python),
#   - each token's tails after an underscore, because the linker merges a string into the tail of a
#     longer one ("INPUT" lives inside "CONDITIONAL_INPUT"), so `strings` never prints it alone.
# Mangled C++ symbols (_Z...) are dropped. Needs pip, unzip and binutils' strings; network once.
#
#   tools/trt_binding_names.sh                                  # 8.6.1, 10.3.0 and 11.4.0.106
#   tools/trt_binding_names.sh tensorrt-cu12-bindings==10.3.0   # one version
#
# TensorRT 8.6's bindings are the wheel tensorrt-bindings (8.6.1, x86-64; JetPack 6.0 has 8.6.2,
# the same API); 10.x and 11.x name theirs after the CUDA major (tensorrt-cu12/cu13-bindings).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="$here/tests/export/data"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python="${PYTHON:-python3}"
mkdir -p "$out"
specs=("$@")
[ ${#specs[@]} -gt 0 ] || specs=("tensorrt-bindings==8.6.1" "tensorrt-cu12-bindings==10.3.0" "tensorrt-cu13-bindings==11.4.0.106")
for spec in "${specs[@]}"; do
  version="${spec#*==}"
  dir="$work/$version"
  mkdir -p "$dir"
  "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 "$spec" -d "$dir"
  (cd "$dir" && unzip -q ./*.whl)
  so="$(find "$dir" -name 'tensorrt.so' -path '*tensorrt_bindings*' | head -n 1)"
  init="$(dirname "$so")/__init__.py"
  {
    strings -n 2 "$so"
    cat "$init"
  } | grep -oE '[A-Za-z_][A-Za-z0-9_]*' | grep -v '^_Z' | awk 'length($0) <= 64' \
    | awk '{ print; n = split($0, parts, "_"); tail = ""; for (i = n; i > 1; i--) { tail = (tail == "" ? parts[i] : parts[i] "_" tail); if (tail != "") print tail } }' \
    | LC_ALL=C sort -u > "$out/tensorrt-$version-names.txt"
  echo "$out/tensorrt-$version-names.txt: $(wc -l < "$out/tensorrt-$version-names.txt") names from $spec"
done
