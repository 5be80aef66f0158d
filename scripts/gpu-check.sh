#!/usr/bin/env bash
# Checks a CUDA build of dmm on an NVIDIA GPU, then measures it. Needs no Rust toolchain and no
# network: only the binary from `cargo xtask cuda-build` (built on any x86-64 Linux machine), this
# repository checkout (for the PyTorch fixtures and bench/torch_bench.py) and the CUDA libraries
# the machine has: the driver's libcuda, and cuBLAS from a CUDA toolkit or from the pip
# packages PyTorch installs (nvidia/cu13/lib, nvidia/*/lib), which this script finds.
#
#   scripts/gpu-check.sh [--bin PATH] [--device cuda:N] [--cpu]
#
# 1. `dmm gpu-check`: every custom op on the GPU against the CPU path (f64, outputs and gradients)
#    and against finite differences, a DMM-CNN eval forward and training step against the CPU,
#    and the PyTorch fixtures on the GPU.
# 2. Throughput at width 64, 218×178, batch 64: a training step and an eval forward, `dmm bench`
#    beside bench/torch_bench.py on the same GPU when PyTorch with CUDA is installed.
# Prints one table; exits non-zero if a check or a run fails. About 2–4 minutes on an H100/H200.
#
# --cpu runs the same steps on the CPU at toy sizes (width 8, 64×64, batch 2): a test of this
# script and of the check harness on a machine without a GPU.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${DMM_BIN:-}
device=cuda:0
cpu_mode=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --bin) bin=$2; shift 2 ;;
        --device) device=$2; shift 2 ;;
        --cpu) cpu_mode=1; device=cpu; shift ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu-check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [[ -z $bin ]]; then
    for candidate in "$repo/target/cuda/release/dmm" "$repo/dmm" "$(command -v dmm || true)"; do
        if [[ -n $candidate && -x $candidate ]]; then bin=$candidate; break; fi
    done
fi
if [[ -z $bin || ! -x $bin ]]; then
    echo "gpu-check.sh: no dmm binary: pass --bin PATH (build it with \`cargo xtask cuda-build\`)" >&2
    exit 2
fi

# Library folders: a CUDA toolkit's, then those of Python's nvidia-* wheels and of PyTorch.
lib_dirs=()
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [[ -d $d ]] && lib_dirs+=("$d")
done
if command -v python3 >/dev/null; then
    while IFS= read -r d; do
        [[ -n $d ]] && lib_dirs+=("$d")
    done < <(python3 - <<'EOF' 2>/dev/null
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()]
seen = set()
for root in roots:
    for pattern in ("nvidia/cu*/lib", "nvidia/*/lib", "torch/lib"):
        for d in sorted(glob.glob(os.path.join(root, pattern))):
            if d not in seen and glob.glob(os.path.join(d, "lib*.so*")):
                seen.add(d)
                print(d)
EOF
)
fi
if [[ ${#lib_dirs[@]} -gt 0 ]]; then
    joined=$(IFS=:; echo "${lib_dirs[*]}")
    export LD_LIBRARY_PATH="$joined${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

echo "# dmm gpu-check, $(date -u +%Y-%m-%dT%H:%MZ)"
echo "binary: $bin ($("$bin" --version 2>/dev/null || echo 'version unknown'))"
if command -v nvidia-smi >/dev/null; then
    echo "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
fi
echo "libraries searched: ${LD_LIBRARY_PATH:-none}"
echo

status=0
echo "## Correctness"
errors=$(mktemp)
torch_errors=$(mktemp)
trap 'rm -f "$errors" "$torch_errors"' EXIT
timeout 300 "$bin" gpu-check --device "$device" --fixtures "$repo/crates/dmm-model/tests/fixtures" 2>"$errors"
code=$?
cat "$errors" >&2
if grep -q "^error: $device:" "$errors"; then
    echo "gpu-check.sh: $device cannot be opened (above); nothing else to run" >&2
    exit 2
elif [[ $code != 0 ]]; then
    echo "gpu-check.sh: dmm gpu-check failed" >&2
    status=1
fi
echo

if [[ $cpu_mode == 1 ]]; then
    width=8 size=64x64 batch=2 iters=1
else
    width=64 size=218x178 batch=64 iters=5
fi

have_torch=0
if command -v python3 >/dev/null && python3 -c "import torch, sys; sys.exit(0 if '$device' == 'cpu' or torch.cuda.is_available() else 1)" 2>/dev/null; then
    have_torch=1
fi

# The value of "key" in one JSON line (dmm writes "key":v, Python "key": v).
field() { sed -nE "s/.*\"$1\": ?([0-9.eE+-]+).*/\1/p" <<<"$2"; }

echo "## Throughput, width $width, $size, batch $batch, median of $iters"
echo
echo "| case | dmm s | dmm images/s | PyTorch s | PyTorch images/s | dmm speed vs PyTorch |"
echo "|---|---|---|---|---|---|"
for mode in train-step forward; do
    out=$(timeout 240 "$bin" bench "$mode" --width $width --size $size --batch $batch --iters $iters --device "$device" --json) || {
        echo "gpu-check.sh: dmm bench $mode failed" >&2
        status=1
        continue
    }
    d_s=$(field median_s "$out")
    d_r=$(field images_per_s "$out")
    t_s=- t_r=- ratio=-
    if [[ $have_torch == 1 ]]; then
        if tout=$(timeout 240 python3 "$repo/bench/torch_bench.py" "$mode" --width $width --size $size --batch $batch --iters $iters --device "$device" --json 2>"$torch_errors"); then
            t_s=$(awk -v v="$(field median_s "$tout")" 'BEGIN { printf "%.4f", v }')
            t_r=$(awk -v v="$(field images_per_s "$tout")" 'BEGIN { printf "%.1f", v }')
            ratio=$(awk -v a="$t_s" -v b="$d_s" 'BEGIN { printf "%.2f×", a / b }')
        else
            t_s="failed"
            echo "gpu-check.sh: bench/torch_bench.py $mode failed: $(tail -n 1 "$torch_errors")" >&2
        fi
    fi
    printf '| %s | %.4f | %.1f | %s | %s | %s |\n' "$mode" "$d_s" "$d_r" "$t_s" "$t_r" "$ratio"
done
[[ $have_torch == 1 ]] || echo "(PyTorch with CUDA not found: no reference column)"
exit $status
