#!/usr/bin/env bash
# Fuzzes the safetensors readers (header parser, index parser, file and checkpoint readers) with
# libFuzzer for a fixed time (default 60 s):
#   scripts/fuzz.sh [seconds] [build-dir]
# Two thirds of the time with inputs up to 4 KiB (fast, deep mutation), one third with inputs up to
# 1 MiB (headers of thousands of tensors: the corpus holds one of 5000), each run printing its
# executions ("stat::number_of_executed_units").
# Needs clang with libFuzzer's runtime (Debian: clang-14 libclang-rt-14-dev); exits 77 (skipped,
# for ctest) when there is none. Exits non-zero if the fuzzer finds a crash, a sanitizer report,
# an exception other than tp::IoError, or a broken invariant; the input is left in the build dir.
set -euo pipefail
seconds=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
out=${2:-$root/build-fuzz}
cxx=${TP_FUZZ_CXX:-}
if [ -z "$cxx" ]; then
  for c in clang++ clang++-19 clang++-18 clang++-17 clang++-16 clang++-15 clang++-14; do
    command -v "$c" >/dev/null && { cxx=$c; break; }
  done
fi
if [ -z "$cxx" ]; then echo "fuzz.sh: no clang++ found; skipping" >&2; exit 77; fi
mkdir -p "$out/corpus"
probe="$out/probe.cpp"
echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' >"$probe"
if ! "$cxx" -fsanitize=fuzzer "$probe" -o "$out/probe" 2>/dev/null; then
  echo "fuzz.sh: $cxx cannot link -fsanitize=fuzzer (Debian: apt-get install libclang-rt-14-dev); skipping" >&2
  exit 77
fi
bin="$out/safetensors_fuzz"
src="$root/tests/fuzz/safetensors_fuzz.cpp"
stale=0
[ -x "$bin" ] || stale=1
for dep in "$src" "$root"/include/tp/io/*.hpp "$root"/include/tp/core/*.hpp; do
  [ "$dep" -nt "$bin" ] && stale=1
done
if [ "$stale" = 1 ]; then
  "$cxx" -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -DTP_HAS_IO=1 -I"$root/include" "$src" -lfmt -o "$bin"
fi
cp -n "$root"/tests/fuzz/corpus/* "$out/corpus/" 2>/dev/null || true
cd "$out"
small=$(( seconds * 2 / 3 > 0 ? seconds * 2 / 3 : 1 ))
large=$(( seconds - small > 0 ? seconds - small : 1 ))
# -error_exitcode: libFuzzer's default, 77, is the code ctest reads as "skipped".
"$bin" -max_total_time="$small" -max_len=4096 -timeout=10 -error_exitcode=1 -timeout_exitcode=1 -rss_limit_mb=2048 \
  -dict="$root/tests/fuzz/safetensors.dict" -print_final_stats=1 "$out/corpus"
exec "$bin" -max_total_time="$large" -max_len=1048576 -timeout=10 -error_exitcode=1 -timeout_exitcode=1 -rss_limit_mb=2048 \
  -dict="$root/tests/fuzz/safetensors.dict" -print_final_stats=1 "$out/corpus"
