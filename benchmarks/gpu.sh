#!/usr/bin/env bash
# The GPU checks and benchmarks in one call, for a lent CUDA machine with no network:
#   the CUDA tests (tests/test_cuda.py), then the whole suite with CUDA visible (evaluate defaults to cuda),
#   bench_overhead (LeNet-5 and ResNet-18, batch 1/128/1024), bench_classification (DeepFool both ways),
#   bench_deepfool_backward, and `pertattack evaluate --device cuda`, each step with its own time limit.
# Inputs: $MNIST (folder of the MNIST test IDX files), $CKPT (a LeNet-5 checkpoint), optional $WHEELS
# (folder of wheels for the peers: torchattacks, foolbox and its needs), $OUT (where the logs and CSVs go).
# Everything lands in $OUT/gpu.tgz (logs, CSVs, the evaluate folder), and each step's log tail is printed.
# Run from the repository root:  MNIST=.gpu/mnist CKPT=.gpu/lenet5-e5.pt WHEELS=.whl OUT=/tmp/gpu bash benchmarks/gpu.sh
# SECTIONS (default all): a subset of "tests suite overhead resnet classification backward evaluate torchrun";
# DEVICE (default cuda), BATCHES (default 1,128,1024), N (default 1024), REPEAT (default 5): for a dry run on a CPU;
# OVH_ATTACKS, CLS_ATTACKS: the attacks of bench_overhead and bench_classification (default: all of the list below);
# TA_DF_N: images for torchattacks' per-image DeepFool (default 32).
set -u
OUT=${OUT:-/tmp/pertattack-gpu}
SECTIONS=${SECTIONS:-tests suite overhead resnet classification backward evaluate torchrun}
OVH_ATTACKS=${OVH_ATTACKS:-fgsm,pgd,bim,alg1-10,pgd-paper,apgd-ce}
CLS_ATTACKS=${CLS_ATTACKS:-fgsm,pgd,bim,alg1-10,deepfool-l2,deepfool-linf}
DEVICE=${DEVICE:-cuda} BATCHES=${BATCHES:-1,128,1024} N=${N:-1024} REPEAT=${REPEAT:-5}
W=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PERTATTACK_MNIST="$MNIST"
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  nproc; } 2>&1 | tee "$W/machine.txt"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, print its tail and time
  local name=$1 limit=$2; shift 2
  local t0
  t0=$(date +%s%N)
  timeout "$limit" "$@" >"$W/$name.log" 2>&1
  local rc=$?
  echo "=== $name: rc $rc, $(( ($(date +%s%N) - t0) / 1000000 )) ms" | tee -a "$W/steps.txt"
  tar czf "$OUT/gpu.tgz" -C "$W" .  # after every step: what ran comes back even if a later step overruns
}
on() { [[ " $SECTIONS " == *" $1 "* ]]; }

B=benchmarks
on tests && step tests 90 python3 -m pytest tests/test_cuda.py -q -p no:cacheprovider -rfE
on overhead && step overhead 120 python3 $B/bench_overhead.py --device "$DEVICE" --model lenet5 --batch "$BATCHES" --threads 1 \
  --attacks "$OVH_ATTACKS" --repeat "$REPEAT" --checkpoint "$CKPT" --out "$W/overhead_$DEVICE.csv"
on classification && step classification 120 python3 $B/bench_classification.py --device "$DEVICE" --n "$N" --repeat "$REPEAT" \
  --attacks "$CLS_ATTACKS" --threads 1 --deepfool-variants --ta-deepfool-n "${TA_DF_N:-32}" --checkpoint "$CKPT" --out "$W/classification_$DEVICE.csv"
on backward && step backward 40 python3 $B/bench_deepfool_backward.py --device "$DEVICE" --n "$N" --repeat 20 --checkpoint "$CKPT"
on evaluate && step evaluate 90 bash -c "time python3 -m pertattack evaluate --model '$CKPT' --data mnist --root '$MNIST' \
  --attack pgd,deepfool,apgd-ce --eps 0.1 --p inf --limit 2000 --batch-size 500 --device $DEVICE --out '$W/eval' --no-progress"
on resnet && step resnet 150 python3 $B/bench_overhead.py --device "$DEVICE" --model resnet18 --batch "$BATCHES" --threads 1 \
  --attacks fgsm,pgd,bim,alg1-10,pgd-paper,apgd-ce --repeat 3 --out "$W/resnet18_$DEVICE.csv"
# two ranks on one GPU (torchrun's default device cuda:LOCAL_RANK wraps around), compared with the 1-process run
on torchrun && step torchrun 120 bash -c "time python3 -m torch.distributed.run --standalone --nproc-per-node 2 \
  -m pertattack evaluate --model '$CKPT' --data mnist --root '$MNIST' --attack pgd,deepfool,apgd-ce --eps 0.1 --p inf \
  --limit 2000 --batch-size 500 --out '$W/eval2' --no-progress && python3 $B/compare_rows.py '$W/eval' '$W/eval2'"
on suite && step suite 150 env -u PERTATTACK_MNIST python3 -m pytest tests -q -p no:cacheprovider -n 8 -rfE
for f in "$W"/*.log; do echo "----- $f"; tail -n 25 "$f"; done
cat "$W/steps.txt"
