#!/usr/bin/env bash
# The GPU checks, in one command on a lent GPU machine (a copy of the working tree, nothing installable,
# results under $OUT). Prepare first, where the network is reachable: bash benchmarks/device_prepare.sh,
# then carry "dist" and "data/fashion-mnist" along. Stages (default: all three, about 9 minutes):
#   tests   pytest -m gpu (the real Triton kernels, CUDA-graph replay, gradcheck)       <= TESTS_S
#   bench   benchmarks/op_gpu.py, layer table then training-step table                  <= BENCH_S
#   preset  python -m recipes.paper_rn18 --preset gpu --epochs $PRESET_EPOCHS            <= PRESET_S
# Each stage runs under its own timeout, writes OUT/<stage>.log (and its JSON / markdown / run folder),
# and a stage that fails or times out does not stop the next. OUT/summary.txt: one line per stage.
#
#   OUT=/tmp/out bash benchmarks/device_check.sh [tests] [bench] [preset]
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder the results go to}"
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests bench preset)
TESTS_S=${TESTS_S:-150} BENCH_S=${BENCH_S:-200} PRESET_S=${PRESET_S:-200} PRESET_EPOCHS=${PRESET_EPOCHS:-1}
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
print("python", platform.python_version(), "| torch", torch.__version__, "| device", torch.cuda.get_device_name())
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
    preset) stage preset "$PRESET_S" "$python" -m recipes.paper_rn18 --preset gpu --epochs "$PRESET_EPOCHS" \
        --data-dir data/fashion-mnist --dataset fashion_mnist --out "$OUT/paper_rn18_gpu" --overwrite ;;
    *) echo "device_check.sh: unknown stage $name (tests, bench, preset)" >&2; exit 2 ;;
    esac
done
