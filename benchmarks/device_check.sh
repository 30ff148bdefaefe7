#!/usr/bin/env bash
# The GPU checks on a lent GPU machine (a copy of the working tree, nothing installable, results under
# $OUT). Prepare first, where the network is reachable: bash benchmarks/device_prepare.sh, then carry
# "dist" and "data/cifar-10-subset" along. Stages:
#   tests   pytest -m gpu (the real Triton kernels, CUDA-graph replay, gradcheck)
#   bench   benchmarks/op_gpu.py: the layer table, then the training-step table
#   preset  python -m recipes.paper_rn18 --preset gpu (full width, bf16, the CIFAR-10 subset, 1,000 images)
# All three (the default) fit one 10-minute command: tests 240 s, bench 180 s, and the preset cut to a
# timing probe (1 epoch of 12,800 images, evaluation on 200 images) in 130 s. One stage alone gets
# 560 s; `preset` alone is the real run (the preset's epochs, every image). Override with TESTS_S,
# BENCH_S, PRESET_S, PRESET_EPOCHS, PRESET_SAMPLES, PRESET_EXAMPLES.
# Each stage writes OUT/<stage>.log (and its JSON / markdown / run folder); a stage that fails or times
# out does not stop the next. OUT/summary.txt: one line per stage.
#
#   OUT=/tmp/out bash benchmarks/device_check.sh [tests] [bench] [preset]
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder the results go to}"
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests bench preset)
if [ ${#stages[@]} -eq 1 ]; then
    TESTS_S=${TESTS_S:-560} BENCH_S=${BENCH_S:-560} PRESET_S=${PRESET_S:-560}
    preset_cut=()
else
    TESTS_S=${TESTS_S:-240} BENCH_S=${BENCH_S:-180} PRESET_S=${PRESET_S:-130}
    preset_cut=(--epochs "${PRESET_EPOCHS:-1}" --samples-per-epoch "${PRESET_SAMPLES:-12800}"
        --examples "${PRESET_EXAMPLES:-200}")
fi
[ -n "${PRESET_EPOCHS:-}" ] && [ ${#stages[@]} -eq 1 ] && preset_cut+=(--epochs "$PRESET_EPOCHS")
python=${PYTHON:-python}
mkdir -p "$OUT"

if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "device_check.sh: no CUDA device visible to $python (torch.cuda.is_available() is False)" >&2
    exit 2
fi

# Install the carried wheels (built here by device_prepare.sh) into a private folder; the stages run
# from a folder without the source packages, so Python imports the installed dcspass (with its
# dcspass.kernels mapping) rather than the raw checkout.
run_dir=$PWD
if ls dist/dcspass-*.whl >/dev/null 2>&1; then
    site=$(mktemp -d)/site
    "$python" -m pip install --quiet --no-deps --no-index --target "$site" dist/dcspass-*.whl dist/deps/*.whl \
        > "$OUT/install.log" 2>&1 || { echo "device_check.sh: installing dist/ failed, see install.log" >&2; exit 2; }
    run_dir=$(mktemp -d)/run
    mkdir -p "$run_dir" && cp -r tests benchmarks pyproject.toml "$run_dir"/
    [ -d data ] && ln -s "$PWD/data" "$run_dir/data"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
else
    echo "no dist/dcspass-*.whl: running the raw checkout (run benchmarks/device_prepare.sh first)" \
        | tee "$OUT/install.log"
fi
unset TRITON_INTERPRET
cd "$run_dir"
"$python" - > "$OUT/environment.txt" 2>&1 <<'PY'
import importlib, platform, torch
device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print("python", platform.python_version(), "| torch", torch.__version__, "| device", device)
for name in ("triton", "torchvision", "dcspass", "dcspass.kernels", "kernels", "hypothesis", "torchattacks",
             "matplotlib", "tqdm", "networkx", "pytest"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", ""), getattr(module, "__file__", ""))
    except ImportError as exc:
        print(name, "MISSING:", exc)
PY

stage() {  # stage NAME SECONDS COMMAND...: run under a timeout, log, one summary line
    local name=$1 seconds=$2
    shift 2
    local start=$SECONDS
    timeout -k 15 "$seconds" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    local verdict=ok
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && verdict="TIMED OUT after ${seconds}s"
    [ $rc -ne 0 ] && [ "$verdict" = ok ] && verdict="FAILED (exit $rc)"
    echo "$name: $verdict, $((SECONDS - start)) s: $*" | tee -a "$OUT/summary.txt"
}

for name in "${stages[@]}"; do
    case $name in
    tests) stage tests "$TESTS_S" "$python" -m pytest -m gpu -q -rs -p no:cacheprovider \
        --junitxml="$OUT/pytest_gpu.xml" tests/test_triton_kernels.py ;;
    bench) stage bench "$BENCH_S" "$python" benchmarks/op_gpu.py --rounds 3 --reps 3 --queue 20 \
        --json "$OUT/op_gpu.json" --markdown "$OUT/op_gpu.md" ;;
    preset) stage preset "$PRESET_S" "$python" -m recipes.paper_rn18 --preset gpu "${preset_cut[@]}" \
        --data-dir data/cifar-10-subset --out "$OUT/paper_rn18_gpu" --overwrite ;;
    *) echo "device_check.sh: unknown stage $name (tests, bench, preset)" >&2; exit 2 ;;
    esac
done
