#!/usr/bin/env bash
# Installs the Debian packages tp builds against, if any are missing (as root, or through sudo).
# The CUDA toolkit is not a Debian package here: CUDA targets build when nvcc is found.
# Optional, not installed here: clang-14 libclang-rt-14-dev for scripts/fuzz.sh (libFuzzer); the
# fuzz.safetensors ctest entry skips itself without them.
set -euo pipefail
packages=(cmake ninja-build g++ pkg-config libfmt-dev libopenblas-dev libopenmpi-dev openmpi-bin
          libgtest-dev libgmock-dev libbenchmark-dev libcli11-dev nlohmann-json3-dev libgloo-dev
          libpcre2-dev libicu-dev   # tp::text: the tokenizers' regexes (PCRE2) and Unicode tables (ICU)
          libdnnl-dev   # oneDNN: optional for tp (Cpu's sgemm where OpenBLAS lacks the CPU's kernels)
          ocl-icd-opencl-dev   # Debian's dnnl-config.cmake requires OpenCL (its GPU runtime)
          ccache)  # optional: rebuilds of unchanged sources, also across worktrees (scripts/common.sh)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "tp: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
