#!/usr/bin/env bash
# Packs what the GPU machines lack (they have nvcc, CMake, ninja and PyTorch, but no GoogleTest,
# Google Benchmark, {fmt}, OpenBLAS or package registry) into .deps/ (git-ignored), for
# scripts/gpu-suite.sh to build from there. Run here, on a dev machine with the Debian packages
# of scripts/install-deps.sh, once:
#
#   scripts/pack-gpu-deps.sh
#
# What goes in (about 6 MB):
#   .deps/src/googletest     /usr/src/googletest (Debian's googletest sources; built on the GPU machine)
#   .deps/benchmark          Google Benchmark as Debian ships it (libbenchmark.so 1.7.1, headers, CMake files)
#   .deps/fmt                {fmt} headers and a CMake package making fmt::fmt header-only
#   .deps/nlohmann_json      nlohmann json (header-only) and its CMake package: tp::io, which the
#                            models and the trainer need (tp_cuda_train_tests, tp_nccl_train_tests)
#   .deps/openblas.tar.xz    a static OpenBLAS (only the members the project's cblas_* / openblas_* calls
#                            pull in, read from the sources) and its headers: the CUDA tests' references run
#                            on tp::Cpu (GEMM and GEMV)
set -euo pipefail
cd "$(dirname "$0")/.."
deps=$PWD/.deps
rm -rf "$deps" && mkdir -p "$deps/src"
tmp=$(mktemp -d) && trap 'rm -rf "$tmp"' EXIT

echo "googletest <- /usr/src/googletest"
cp -r /usr/src/googletest "$deps/src/googletest"

echo "benchmark <- Debian's libbenchmark (shared library, headers, CMake package)"
# PyPI's google-benchmark sdist carries only the Python bindings, and Debian ships no sources, so
# the library travels prebuilt: it needs glibc >= 2.32 and libstdc++ >= GLIBCXX_3.4.30 (gcc 12).
# Regular files, no symlinks, so that the copy survives any transfer.
multiarch=lib/x86_64-linux-gnu
mkdir -p "$deps/benchmark/include" "$deps/benchmark/$multiarch/cmake"
cp -r /usr/include/benchmark "$deps/benchmark/include/"
cp /usr/$multiarch/libbenchmark.so.1.7.1 "$deps/benchmark/$multiarch/libbenchmark.so.1.7.1"
cp /usr/$multiarch/libbenchmark.so.1.7.1 "$deps/benchmark/$multiarch/libbenchmark.so.1debian"
cp /usr/$multiarch/libbenchmark_main.a "$deps/benchmark/$multiarch/"
cp -r /usr/$multiarch/cmake/benchmark "$deps/benchmark/$multiarch/cmake/"

echo "fmt <- /usr/include/fmt (header-only)"
mkdir -p "$deps/fmt/include" "$deps/fmt/lib/cmake/fmt"
cp -r /usr/include/fmt "$deps/fmt/include/"
fmt_version=$(sed -n 's/^#define FMT_VERSION \([0-9]*\).*/\1/p' /usr/include/fmt/core.h)
fmt_version=$((fmt_version / 10000)).$((fmt_version / 100 % 100)).$((fmt_version % 100))
cat > "$deps/fmt/lib/cmake/fmt/fmt-config.cmake" <<'CMAKE'
# {fmt} as a header-only package (FMT_HEADER_ONLY), packed by tp's scripts/pack-gpu-deps.sh.
if(NOT TARGET fmt::fmt)
  add_library(fmt::fmt INTERFACE IMPORTED)
  set_target_properties(fmt::fmt PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${CMAKE_CURRENT_LIST_DIR}/../../../include"
    INTERFACE_COMPILE_DEFINITIONS FMT_HEADER_ONLY=1)
endif()
CMAKE
cat > "$deps/fmt/lib/cmake/fmt/fmt-config-version.cmake" <<CMAKE
set(PACKAGE_VERSION $fmt_version)
set(PACKAGE_VERSION_COMPATIBLE TRUE)
if(PACKAGE_FIND_VERSION VERSION_EQUAL PACKAGE_VERSION)
  set(PACKAGE_VERSION_EXACT TRUE)
endif()
CMAKE

echo "nlohmann_json <- /usr/include/nlohmann and its CMake package (header-only)"
# The package's targets file finds the headers three directories above itself (share/cmake/<name>).
mkdir -p "$deps/nlohmann_json/include" "$deps/nlohmann_json/share/cmake"
cp -r /usr/include/nlohmann "$deps/nlohmann_json/include/"
cp -r /usr/share/cmake/nlohmann_json "$deps/nlohmann_json/share/cmake/"

echo "openblas <- Debian's static libopenblas, trimmed to the members tp links"
archive=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.a
headers=/usr/include/x86_64-linux-gnu/openblas-pthread
# Every CBLAS / OpenBLAS function the project calls (tp::Cpu's GEMM and GEMV, the thread controls),
# read from the sources so that a new call cannot be left out of the trimmed archive: each one is
# referenced from syms.c, which pulls its archive member (and what that needs) into the link map.
symbols=$(grep -rhoE '\b(cblas|openblas)_[a-z0-9_]+ *\(' include tests bench examples | sed 's/ *($//' | sort -u)
[ -n "$symbols" ] || { echo "found no cblas_/openblas_ calls in the sources" >&2; exit 1; }
echo "  functions: $(echo $symbols)"
{
  for s in $symbols; do echo "extern void $s(void);"; done
  echo "void (*const tp_blas_symbols[])(void) = {"
  for s in $symbols; do echo "  $s,"; done
  echo "};"
} > "$tmp/syms.c"
cat > "$tmp/use.c" <<'C'
#include <cblas.h>
extern void (*const tp_blas_symbols[])(void);
int main(void) {
  float a[4] = {1, 2, 3, 4}, c[4], x[2] = {1, 1}, y[2];
  double d[4] = {1, 2, 3, 4}, e[4], u[2] = {1, 1}, v[2];
  openblas_set_num_threads(1);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, 2, 2, 2, 1.f, a, 2, a, 2, 0.f, c, 2);
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, 2, 2, 2, 1.0, d, 2, d, 2, 0.0, e, 2);
  cblas_sgemv(CblasRowMajor, CblasNoTrans, 2, 2, 1.f, a, 2, x, 1, 0.f, y, 1);
  cblas_dgemv(CblasRowMajor, CblasNoTrans, 2, 2, 1.0, d, 2, u, 1, 0.0, v, 1);
  return (c[0] == 5.f && e[0] == 5.0 && y[1] == 7.f && v[1] == 7.0 && openblas_get_num_threads() == 1 &&
          openblas_get_corename()[0] && tp_blas_symbols[0] != 0) ? 0 : 1;
}
C
gcc -I"$headers" "$tmp/use.c" "$tmp/syms.c" "$archive" -lpthread -lm -Wl,-Map="$tmp/map.txt" -o "$tmp/use"
grep -oE 'libopenblas[^ /]*\.a\([^)]+\)' "$tmp/map.txt" | sed -E 's/.*\((.*)\)/\1/' | sort -u > "$tmp/members.txt"
mkdir -p "$tmp/obj" "$tmp/openblas/lib" "$tmp/openblas/include"
(cd "$tmp/obj" && xargs ar x "$archive" < "$tmp/members.txt" && ar rcs "$tmp/openblas/lib/libopenblas.a" ./*.o)
strip --strip-debug "$tmp/openblas/lib/libopenblas.a"
cp "$headers"/cblas.h "$headers"/openblas_config.h "$tmp/openblas/include/"
# The trimmed archive alone must satisfy every function (a missing member is an undefined reference here).
gcc -I"$tmp/openblas/include" "$tmp/use.c" "$tmp/syms.c" "$tmp/openblas/lib/libopenblas.a" -lpthread -lm -o "$tmp/use2"
"$tmp/use2" || { echo "the trimmed OpenBLAS computes wrong results" >&2; exit 1; }
nm -g --defined-only "$tmp/openblas/lib/libopenblas.a" 2> /dev/null > "$tmp/defined.txt" || true
for s in $symbols; do
  grep -qE " T $s\$" "$tmp/defined.txt" || { echo "the trimmed OpenBLAS lacks $s" >&2; exit 1; }
done
tar -C "$tmp" -cJf "$deps/openblas.tar.xz" openblas

du -sh "$deps"
echo "packed into $deps; now run scripts/gpu-suite.sh on a GPU machine with carry [\".deps\"]"
