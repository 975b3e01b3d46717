#!/usr/bin/env bash
# Runs tp's benchmark suites for every backend (local threads, MPI, Gloo) at world sizes 1, 2 and 4,
# the PyTorch gloo peer (bench/peers/) on the MLP shapes under PyTorch 2.x from PyPI (a venv made
# once) and Debian's python3-torch, whichever are there, and writes BENCHMARKS.md
# with tables and PNG plots (docs/bench/). About 10 minutes on a 2-core machine; --quick is a
# smoke test of the whole path in about 2.
#
# usage: scripts/bench.sh [--quick] [--build-dir DIR] [--skip-build] [--no-peer]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
command_line=$(echo "scripts/bench.sh $*" | sed 's/ *$//')
build=$root/build-bench
quick=0
skip_build=0
peer=1
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 ;;
    --build-dir) build=$2; shift ;;
    --build-dir=*) build=${1#*=} ;;
    --skip-build) skip_build=1 ;;
    --no-peer) peer=0 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

py=/usr/bin/python3  # Debian's python: python3-torch and python3-matplotlib live there
[ -x $py ] || py=python3

# Open MPI as root / oversubscribed come from common.sh, as for the other scripts; what follows is
# only for benchmarking. OPENBLAS_CORETYPE is left as the environment has it: tp::Cpu copes.
source "$root/scripts/common.sh"
# Open MPI spins while it waits; on two vCPUs that share a core, a spinning rank takes the FPU from
# the rank still computing (measured: MLP step at 1 token, 2 ranks, 86 ms spinning vs 22 ms yielding).
export OMPI_MCA_mpi_yield_when_idle=${OMPI_MCA_mpi_yield_when_idle:-1}
export OPENBLAS_NUM_THREADS=1

if [ $skip_build -eq 0 ]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTP_BUILD_TESTS=OFF -DTP_BUILD_EXAMPLES=OFF \
        -DTP_BUILD_BENCH=ON >/dev/null
  cmake --build "$build" --target tp_bench_comm tp_bench_layers tp_bench_blas tp_bench_decode tp_bench_decode_parts tp_bench_prefill tp_bench_train
fi
bin=$build/bench
results=$build/bench-results
rm -rf "$results"
mkdir -p "$results"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
start=$(date +%s)

have_mpi=0
command -v mpirun >/dev/null && have_mpi=1

if [ $quick -eq 1 ]; then
  comm_args=(--max-bytes=1048576 --step-factor=16 --benchmark_min_time=0.02)
  tokens=8,512
  layer_args=(--hidden=1024 --benchmark_min_time=0.02)
  side_args=(--layers=column,row --modes=fwdbwd --hidden=1024 --tokens=512 --sgemm=none --triad=none
             --benchmark_min_time=0.02)
  peer_tokens=(8 512)
  worlds=(1 2)
else
  comm_args=(--min-bytes=4 --benchmark_min_time=0.1)  # from 4 B: what verification costs a tiny all_reduce
  tokens=1,8,64,512,2048
  layer_args=(--hidden=1024 --benchmark_min_time=0.2)
  side_args=(--layers=column,row --modes=fwd,fwdbwd --hidden=1024,2048 --tokens=8,512 --sgemm=none --triad=none
             --benchmark_min_time=0.1)
  peer_tokens=(1 8 64 512 2048)
  worlds=(1 2 4)
fi

# run NAME WORLD BACKEND BINARY ARGS...: in-process for local, under mpirun for mpi and gloo.
run() {
  local name=$1 world=$2 backend=$3 binary=$4
  shift 4
  local out=$results/$name.json
  echo "== $name" >&2
  if [ "$backend" = local ]; then
    "$bin/$binary" --backend=local --world="$world" "$@" --benchmark_out="$out" --benchmark_out_format=json \
      >"$results/$name.txt" 2>&1 || { echo "bench.sh: $name failed, see $results/$name.txt" >&2; return 0; }
  else
    mpirun -np "$world" --oversubscribe --bind-to none "$bin/$binary" --backend="$backend" "$@" \
      --benchmark_out="$out" --benchmark_out_format=json \
      >"$results/$name.txt" 2>&1 || { echo "bench.sh: $name failed, see $results/$name.txt" >&2; return 0; }
  fi
}

backends=(local)
[ $have_mpi -eq 1 ] && backends+=(mpi gloo)
for backend in "${backends[@]}"; do
  for world in "${worlds[@]}"; do
    run "comm-$backend-$world" "$world" "$backend" tp_bench_comm "${comm_args[@]}"
    sgemm=()
    # the bare GEMM rate and the memory bandwidth (triad) matter at 1 and 2 ranks
    [ "$world" -gt 2 ] && sgemm=(--sgemm=none --triad=none)
    run "mlp-$backend-$world" "$world" "$backend" tp_bench_layers --layers=mlp --modes=fwd,fwdbwd \
      --tokens=$tokens "${layer_args[@]}" "${sgemm[@]}"
    if [ "$backend" = mpi ] && [ "$world" -le 2 ]; then
      # Few tokens with the streaming linear kernels and on GEMMs only, side by side (before/after).
      run "small-$backend-$world" "$world" "$backend" tp_bench_layers --layers=mlp --modes=fwd,fwdbwd --tokens=1,8,16 \
        --hidden=1024 --compare-gemm --sgemm=none --triad=none "${layer_args[@]:1}"
      run "linear-$backend-$world" "$world" "$backend" tp_bench_layers "${side_args[@]}"
    fi
  done
done

# The MLP per instruction set: one process per instruction set tp's loops run on (TP_CPU_ISA), with the
# BLAS capped to the same, so that an AVX-512 machine also measures what an AVX2 (or SSE-only) CPU
# would run; the instruction sets alternate, twice (A B A B), so that a change of load shows. Few
# tokens on the streaming kernels and on GEMMs, 512 on GEMMs, beside the same process's triad and
# sgemm rates (the memory and compute limits).
isa_env() {  # the environment that stands in for a CPU of instruction set $1
  case $1 in
    avx512) echo TP_CPU_ISA=avx512 ;;
    avx2) echo TP_CPU_ISA=avx2 OPENBLAS_CORETYPE=Haswell ONEDNN_MAX_CPU_ISA=AVX2 DNNL_MAX_CPU_ISA=AVX2 ;;
    baseline) echo TP_CPU_ISA=baseline OPENBLAS_CORETYPE=Prescott ONEDNN_MAX_CPU_ISA=SSE41 DNNL_MAX_CPU_ISA=SSE41 ;;
  esac
}
isas=$(grep -q ' avx512f ' /proc/cpuinfo && grep -q ' avx512vl ' /proc/cpuinfo && echo "avx512 ")
grep -q ' avx2 ' /proc/cpuinfo && isas="${isas}avx2 "
isas="${isas}baseline"
if [ $quick -eq 1 ]; then isa_tokens=8,512; isa_worlds=(1); isa_time=0.05; else isa_tokens=1,8,12,16,512; isa_worlds=(1 2); isa_time=0.3; fi
isa_backend=local
[ $have_mpi -eq 1 ] && isa_backend=mpi
for world in "${isa_worlds[@]}"; do
  for rep in 1 2; do
    for isa in $isas; do
      # shellcheck disable=SC2046  # isa_env's words are separate assignments
      (export $(isa_env "$isa")
       run "isa-$isa-$rep-$isa_backend-$world" "$world" $isa_backend tp_bench_layers --layers=mlp --modes=fwd,fwdbwd \
         --tokens=$isa_tokens --hidden=1024 --compare-gemm --isa="$isa" --sgemm=2048x2048x2048 --triad=auto \
         --benchmark_min_time=$isa_time)
    done
  done
done

# Long-sequence attention on one rank: 4096 tokens, hidden 512 = 8 heads of 64 (2 kv heads), causal,
# beside the bare sgemm rate of the same process (the attention target's limit). The CPU's flash
# attention keeps no seq^2 probabilities (the old scheme held 2 x 512 MiB here). Two seconds per
# row: a fwd+bwd step takes about half a second, and a single one varied by 10% between runs.
if [ $quick -eq 1 ]; then long_tokens=1024; long_time=0.05; else long_tokens=4096; long_time=2; fi
run attention-long 1 local tp_bench_layers --layers=attention --modes=fwd,fwdbwd --tokens=$long_tokens --hidden=512 \
  --sgemm=2048x2048x2048 --triad=none --benchmark_min_time=$long_time

# The PyTorch peer (bench/peers/torch_mlp_peer.py): same MLP (hidden 1024, ffn 4096, no biases,
# exact GELU), gloo, one process per rank with one intra-op thread, under each PyTorch available:
# 2.x from PyPI in a venv this script makes once and reuses (when pip can fetch it), and Debian's
# python3-torch. Each line of peer.txt names the build (source=pypi|debian) and version that ran.
peer_script=$root/bench/peers/torch_mlp_peer.py
venv=${TP_TORCH_VENV:-$HOME/.cache/tp/torch-venv}
peer_out=$results/peer.txt
: >"$peer_out"
pythons=()
if [ $peer -eq 1 ]; then
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "bench.sh: making $venv with PyTorch 2.x from PyPI (once; a few GB)" >&2
    { $py -m venv "$venv" && "$venv/bin/pip" install -q "torch>=2,<3" numpy; } >"$results/peer-venv.txt" 2>&1 ||
      echo "bench.sh: pip could not install PyTorch 2.x (see $results/peer-venv.txt); the PyPI peer is skipped" >&2
  fi
  "$venv/bin/python" -c "import torch" 2>/dev/null && pythons+=("$venv/bin/python")
  $py -c "import torch" 2>/dev/null && pythons+=("$py")
  [ ${#pythons[@]} -eq 0 ] && echo "bench.sh: PyTorch peer skipped (neither PyPI's nor Debian's torch)" >&2
fi
for peer_py in "${pythons[@]}"; do
  echo "== peer: $("$peer_py" -c 'import torch; print("torch", torch.__version__, "from", torch.__file__)')" >&2
  for world in 1 2; do
    for t in "${peer_tokens[@]}"; do
      iters=20
      [ "$t" -ge 512 ] && iters=5
      [ "$t" -ge 2048 ] && iters=3
      [ $quick -eq 1 ] && iters=3
      OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 timeout 600 "$peer_py" "$peer_script" "$world" "$t" 1024 "$iters" \
        >>"$peer_out" 2>>"$results/peer-err.txt" || echo "bench.sh: peer ($peer_py) world $world tokens $t failed" >&2
    done
  done
done

elapsed=$(( $(date +%s) - start ))
$py "$root/scripts/bench_report.py" --results "$results" --out "$root/BENCHMARKS.md" --plots "$root/docs/bench" \
  --command "$command_line" --load "$load_before" --elapsed "$elapsed" \
  --openblas-coretype "${OPENBLAS_CORETYPE:-}"
# The transformer blocks: causal attention (16 heads, 4 kv heads) and embedding + LM head +
# vocab-parallel cross-entropy (vocab 32000), 512 tokens, hidden 1024, over MPI at world 1, 2, 4.
blocks_log="$results/blocks.txt"
: >"$blocks_log"
for world in 1 2 4; do
  mpirun -np "$world" --oversubscribe "$build/bench/tp_bench_layers" --backend=mpi --layers=attention,embedding_ce \
    --tokens=512 --hidden=1024 --vocab=32000 --sgemm=none --triad=none --benchmark_color=false 2>/dev/null | grep -E "^(attention|embedding_ce)" >>"$blocks_log" ||
    echo "bench.sh: blocks at world $world failed" >&2
done
{
  echo
  echo "## Transformer blocks (MPI, 512 tokens, hidden 1024)"
  echo
  echo 'Causal `ParallelAttention` (16 heads, 4 kv heads, one sequence) and the vocabulary-parallel pair'
  echo '(`VocabParallelEmbedding`, a `ColumnParallelLinear` LM head to 32000, `VocabParallelCrossEntropy`),'
  echo 'forward and forward+backward; GFLOPs summed over ranks. From this run of `scripts/bench.sh`.'
  echo
  echo '```'
  cat "$blocks_log"
  echo '```'
} >>"$root/BENCHMARKS.md"

# Generation: decode (batch 1) and prefill tokens/s of a ~100M-parameter Llama-style model at TP 1
# and 2 over MPI and a SmolLM2-135M-shaped one at TP 1, on this CPU's kernels and on the AVX2 clone
# (TP_CPU_ISA=avx2, and OpenBLAS's Haswell kernels, which tp::Cpu's GEMMs then take: the AVX2 CPUs'
# figures on an AVX-512 machine), against the triad bandwidth
# and sgemm limits measured in the same run; then TP 1 beside PyTorch eager (decode_vs_torch.sh).
if [ -x "$build/bench/tp_bench_decode" ] && [ $have_mpi -eq 1 ]; then
  decode_log="$results/decode.txt"
  : >"$decode_log"
  smollm2_shape=(--vocab 49152 --hidden 576 --layers 30 --heads 9 --kv-heads 3 --ffn 1536)
  header=--header
  for shape in 100m smollm2; do
    for isa in native avx2; do
      [ $isa = avx2 ] && ! grep -qw avx2 /proc/cpuinfo && continue
      # SmolLM2-135M's 9 heads over 3 kv heads split over 1 or 3 ranks, not 2: TP 1 only here.
      for world in 1 $([ $shape = 100m ] && echo 2); do
        # shellcheck disable=SC2046
        env $([ $isa = avx2 ] && echo TP_CPU_ISA=avx2 OPENBLAS_CORETYPE=Haswell) mpirun -np "$world" --oversubscribe "$build/bench/tp_bench_decode" \
          --backend=mpi $header $([ $shape = smollm2 ] && echo "${smollm2_shape[@]}") \
          >>"$decode_log" 2>/dev/null || echo "bench.sh: decode ($shape, $isa) at world $world failed" >&2
        header=
      done
    done
  done
  {
    echo
    echo "## Generation: decode and prefill against the machine's limits"
    echo
    echo 'Two Llama-style models (RMSNorm, RoPE, SwiGLU, GQA, tied embeddings; examples/train_tiny_lm'"'"'s llama'
    echo 'architecture), float32, random weights: 100 M parameters (hidden 768, 12 layers, 12 heads over 4 kv heads,'
    echo 'SwiGLU 2048, vocabulary 32000) and the shape of SmolLM2-135M (hidden 576, 30 layers, 9 heads over 3 kv'
    echo 'heads, SwiGLU 1536, vocabulary 49152; TP 1 only, its heads do not split over 2). One BLAS thread per rank: `tp::generate` of 32 tokens after a'
    echo '128-token prompt, best of 5 after a warm-up run. Decode reads every weight once per token, so its limit is'
    echo 'the triad bandwidth (all ranks at once) over the weight and KV bytes; prefill is GEMMs, so its limit is'
    echo 'the sgemm rate (a 1024^3 tp::Cpu GEMM on every rank at once) over 2 FLOPs per block weight and the causal'
    echo 'attention per prompt token, and the LM head once per prompt (only the last position'"'"'s logits choose the'
    echo 'next token; `Transformer::next_token_logits`). `clone` is the kernels'"'"' instruction set (avx2 forced'
    echo 'with TP_CPU_ISA=avx2 and OPENBLAS_CORETYPE=Haswell, as on an AVX2 CPU, where tp::Cpu takes OpenBLAS for'
    echo 'GEMMs). The model is packed for inference (`Transformer::pack_for_inference`: the prefill'"'"'s GEMMs on'
    echo 'weights prepacked for the GEMM library, decode on the plain ones; `--no-pack` runs it unpacked, "(unpacked)"'
    echo 'in the backend column). `build-bench/bench/tp_bench_decode [--vocab 49152 --hidden 576 --layers 30 --heads 9'
    echo '--kv-heads 3 --ffn 1536]` under `[TP_CPU_ISA=avx2 OPENBLAS_CORETYPE=Haswell] mpirun -np 1|2`.'
    echo
    cat "$decode_log"
  } >>"$root/BENCHMARKS.md"
  # Where the 100 M model's prefill (TP 1) spends its time, part by part, on each clone.
  if [ -x "$build/bench/tp_bench_prefill" ]; then
    {
      echo
      echo "### Where a prefill's time goes"
      echo
      echo 'The 100 M model'"'"'s 128-token prefill at TP 1 (one thread) timed whole beside each of its parts run on'
      echo 'their own through the same ops on the model'"'"'s own weights, every layer in turn; the median of 21 turns,'
      echo 'each timing every part once. `OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 [TP_CPU_ISA=avx2'
      echo 'OPENBLAS_CORETYPE=Haswell] build-bench/bench/tp_bench_prefill`, the model packed for inference (the GEMM'
      echo 'parts on the packed weights; `--no-pack` for the plain ones); the GEMMs at these shapes as stored, as'
      echo '[K, N], prepacked, and through tp'"'"'s packed path: `tp_bench_blas --benchmark_filter=prefill_gemm`.'
      for isa in native avx2; do
        [ $isa = avx2 ] && ! grep -qw avx2 /proc/cpuinfo && continue
        echo
        # shellcheck disable=SC2046
        env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $([ $isa = avx2 ] && echo TP_CPU_ISA=avx2 OPENBLAS_CORETYPE=Haswell) \
          "$build/bench/tp_bench_prefill" 2>&1 || echo "bench.sh: tp_bench_prefill ($isa) failed" >&2
      done
    } >>"$root/BENCHMARKS.md"
  fi
  # Where a decoded token of the 100 M model spends its time at TP 2, part by part, on each clone.
  if [ -x "$build/bench/tp_bench_decode_parts" ]; then
    {
      echo
      echo "### Where a decoded token's time goes"
      echo
      echo 'The 100 M model at TP 2 over MPI (one thread per rank): `tp::generate` of 32 tokens after a 128-token'
      echo 'prompt, its decode per token, beside each part of a token run on its own through the same ops on each'
      echo 'rank'"'"'s own weights, every layer in turn, all ranks at once (the slowest rank counts); the median of 11'
      echo 'turns, each with a triad. `[TP_CPU_ISA=avx2 OPENBLAS_CORETYPE=Haswell] mpirun -np 2 --bind-to none'
      echo 'build-bench/bench/tp_bench_decode_parts`.'
      for isa in native avx2; do
        [ $isa = avx2 ] && ! grep -qw avx2 /proc/cpuinfo && continue
        echo
        # shellcheck disable=SC2046
        env $([ $isa = avx2 ] && echo TP_CPU_ISA=avx2 OPENBLAS_CORETYPE=Haswell) mpirun -np 2 --oversubscribe --bind-to none \
          "$build/bench/tp_bench_decode_parts" 2>&1 || echo "bench.sh: tp_bench_decode_parts ($isa) failed" >&2
      done
    } >>"$root/BENCHMARKS.md"
  fi
  # Beside PyTorch eager (transformers' LlamaForCausalLM, one thread), when pip can install it.
  if [ $peer -eq 1 ]; then
    torch_decode_log="$results/decode-torch.txt"
    TP_BENCH_DECODE=$build/bench/tp_bench_decode TP_TORCH_VENV=$venv "$root/bench/decode_vs_torch.sh" \
      >"$torch_decode_log" 2>"$results/decode-torch-err.txt" ||
      echo "bench.sh: decode_vs_torch.sh failed (see $results/decode-torch-err.txt)" >&2
    {
      echo
      echo "### Generation beside PyTorch eager"
      echo
      echo 'The 100 M model at TP 1 (one thread) beside transformers'"'"' LlamaForCausalLM of the same shape under'
      echo 'PyTorch eager with one intra-op thread, greedy through its DynamicCache, the prompt'"'"'s logits for the'
      echo 'last position only (as generate() asks); turns alternate, each the best of 3 generations.'
      echo '`bench/decode_vs_torch.sh` (TP_BENCH_DECODE=build-bench/bench/tp_bench_decode).'
      echo
      echo '```'
      cat "$torch_decode_log"
      echo '```'
    } >>"$root/BENCHMARKS.md"
  fi
fi

# The measurements behind tp::Cpu's GEMM library rule: single-thread sgemm, OpenBLAS beside oneDNN
# and beside what tp::Cpu picked, on the layers' shapes.
if [ -x "$build/bench/tp_bench_blas" ]; then
  {
    echo
    echo "## The BLAS: single-thread sgemm, OpenBLAS beside oneDNN and tp::Cpu's choice"
    echo
    echo 'How `tp::Cpu` picks the library for float GEMMs (oneDNN on CPUs with AVX-512, else OpenBLAS; see'
    echo '`include/tp/device/cpu/cpu.hpp`). `build-bench/bench/tp_bench_blas`, one'
    echo "thread each, same run (oneDNN rows appear when Debian's libdnnl-dev is installed). GFLOP/s from CPU time."
    echo
    echo '```'
    OMP_NUM_THREADS=1 "$build/bench/tp_bench_blas" --benchmark_filter='^(openblas|onednn|tp_cpu)/' --benchmark_min_time=0.3 --benchmark_color=false 2>/dev/null | grep -E "^(Benchmark|-|openblas/|onednn/|tp_cpu/)"
    echo '```'
  } >>"$root/BENCHMARKS.md"
fi

# bf16 against fp32 on the CPU: tp::Cpu::gemm and the MLP block's forward+backward, each shape's
# fp32, bf16 (oneDNN's bf16 matmul where the CPU has AVX512_BF16 or AMX) and bf16 widened to fp32
# (the fallback) rows interleaved at random over three repetitions, medians compared.
if [ -x "$build/bench/tp_bench_blas" ] && [ -x "$build/bench/tp_bench_layers" ]; then
  bf16_blas="$(mktemp)" bf16_layers="$(mktemp)"
  OMP_NUM_THREADS=1 "$build/bench/tp_bench_blas" --benchmark_filter='tp_cpu_dtype|cpu_peak' --benchmark_min_time=0.3 \
    --benchmark_repetitions=3 --benchmark_enable_random_interleaving=true --benchmark_format=json >"$bf16_blas" 2>/dev/null
  "$build/bench/tp_bench_layers" --backend=local --world=1 --layers=mlp --modes=fwdbwd --tokens=512 --hidden=1024 \
    --dtypes=fp32,bf16,bf16_fp32 --sgemm=none --triad=none --benchmark_repetitions=3 \
    --benchmark_enable_random_interleaving=true --benchmark_format=json >"$bf16_layers" 2>/dev/null
  {
    echo
    echo "## bf16 against fp32 on the CPU"
    echo
    echo "bf16 weights and activations (\`tp::bf16\`) beside float32, same run, each row the median of three"
    echo "repetitions interleaved at random; the CPU's bf16 instructions: $(grep -o 'avx512_bf16\|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
    echo "(none listed: the bf16 rows run on the fallback). Goal: bf16 at least 2x fp32 where the CPU has AVX512_BF16 or AMX."
    echo
    python3 "$root/scripts/bf16_report.py" "$bf16_blas" "$bf16_layers"
  } >>"$root/BENCHMARKS.md"
  rm -f "$bf16_blas" "$bf16_layers"
fi
echo "bench.sh: wrote $root/BENCHMARKS.md and $root/docs/bench/*.png in ${elapsed}s of benchmarks" >&2

# Fine-tuning: examples/finetune's tokens/s at TP 1 and 2 beside PyTorch eager fine-tuning the same
# Llama shape (bench/finetune_vs_torch.sh; the peer needs transformers in the PyPI venv). Uses the
# examples of the main build (scripts/test.sh's build/), which this bench build does not compile.
finetune_bin=${TP_FINETUNE:-$root/build/examples/finetune}
if [ $peer -eq 1 ] && [ -x "$finetune_bin" ] && [ -x "$venv/bin/python" ]; then
  "$venv/bin/python" -c "import transformers" 2>/dev/null ||
    "$venv/bin/pip" install -q transformers safetensors >>"$results/peer-venv.txt" 2>&1 || true
  if "$venv/bin/python" -c "import transformers" 2>/dev/null; then
    finetune_log="$results/finetune.txt"
    TP_FINETUNE=$finetune_bin "$root/bench/finetune_vs_torch.sh" "$venv/bin/python" >"$finetune_log" 2>"$results/finetune-err.txt" ||
      echo "bench.sh: finetune_vs_torch.sh failed (see $results/finetune-err.txt)" >&2
    {
      echo
      echo "## Fine-tuning: examples/finetune beside PyTorch eager"
      echo
      echo 'A random-initialised LlamaForCausalLM (hidden 256, 4 layers, 8 heads over 4 kv heads, SwiGLU 688,'
      echo 'vocabulary 1203), float32, 4 sequences of 128 tokens per step, AdamW and clipping at 1.0 on both sides;'
      echo 'tp at TP 1 and 2 (ranks as threads, one BLAS thread each), PyTorch (PyPI) eager in one process with one'
      echo 'intra-op thread. `bench/finetune_vs_torch.sh` with the PyPI venv'"'"'s python.'
      echo
      echo '```'
      cat "$finetune_log"
      echo '```'
    } >>"$root/BENCHMARKS.md"
  fi
fi

# Training steps at 4 ranks over MPI (issue 25): tokens/s of tp::Trainer at TP 4, TP 2 x DP 2 and
# DP 4 with the DP reduction overlapped and not, in A B A B order; ZeRO-1 with asynchronous and
# blocking collectives, A B A B; memory per rank under ZeRO 0/1
# and recomputation none/full beside the arithmetic.
if [ -x "$build/bench/tp_bench_train" ] && [ $have_mpi -eq 1 ]; then
  train_log="$results/train.txt"
  train_time=$([ $quick -eq 1 ] && echo 0.2 || echo 2)
  mpirun -np 4 --oversubscribe --bind-to none "$build/bench/tp_bench_train" --backend=mpi \
    --benchmark_min_time=$train_time --benchmark_color=false 2>/dev/null | grep -E "^(step|zero|memory)" >"$train_log" ||
    echo "bench.sh: tp_bench_train failed" >&2
  {
    echo
    echo "## Training steps at 4 ranks: overlap, ZeRO-1, recomputation"
    echo
    echo 'tp::Trainer, one step of a Llama-style model (hidden 128, 4 layers, 4 heads over 2 kv heads, SwiGLU'
    echo '512, vocabulary 256; 8 sequences of 64 tokens per step), float32 with fp32 AdamW, buckets of 65536'
    echo 'elements, `mpirun -np 4`. This machine has fewer cores than ranks when it has fewer than 4: then'
    echo 'the ranks share cores and the overlap has no idle core to hide the reduction on. Memory: per rank'
    echo '(the largest over ranks), the activation peak from tp::Cpu'"'"'s allocation counter. From this run.'
    echo
    echo '```'
    cat "$train_log"
    echo '```'
  } >>"$root/BENCHMARKS.md"
fi
