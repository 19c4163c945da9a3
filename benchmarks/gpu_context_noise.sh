#!/usr/bin/env bash
# Does training with a jittered context (python -m reenact.toy.train --context-noise) give the
# toy-v2 model an inversion with fewer bad basins? One lent-GPU call of under 10 minutes:
#
#   1. two fine-tunes of the shipped toy-v2 UNet, side by side on the one GPU (7 data workers
#      each): "cn" with --context-noise NOISE and "ctl", the same command without it (the control:
#      more training alone also moves the figures, docs/RESULTS.md "The shipped weights");
#   2. benchmarks/toy_sweep.py on all 27 benchmark references: the shipped weights, ctl and cn,
#      each at the benchmark's seeds 0 and 1000 (config e, the toy-v2 profile), and the oracle of
#      ctl and cn (the model's own context: what each fine-tune did to the model itself).
#
# A screen, not a verdict: weights are shipped only after `reenact bench toy` on the 2-core CPU
# machine at three seeds (docs/RESULTS.md). Why this experiment: "Why the inversion fails where
# the model does not" in docs/RESULTS.md.
#
# Run from the repository root on the device machine, carrying the diffusers wheel and the
# reference cache (made here: python benchmarks/toy_sweep.py --make-cache .sweep/refs_det.pt):
#   carry: [".whl", ".sweep/refs_det.pt"]
#   command: bash benchmarks/gpu_context_noise.sh $OUT [MINUTES=4] [NOISE=0.2] [SCREEN_S=250]
# $OUT receives the sweep rows, both training logs and both model folders (tar, ~12 MB each).
# A smoke test on a CPU (minutes, meaningless figures): PYTHON=.venv/bin/python DEVICE=cpu BATCH=2
# DATA_WORKERS=0 SWEEP_WORKERS=2 REFS=0 bash benchmarks/gpu_context_noise.sh /tmp/smoke 1 0.2 400 (ran
# end to end in 4m49s on the 2-core machine; a 1-minute budget leaves no training step on a CPU)
set -u
out=${1:?usage: gpu_context_noise.sh OUTDIR [MINUTES] [NOISE] [SCREEN_S]}
minutes=${2:-4}
noise=${3:-0.2}
screen_s=${4:-250}
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
refs=${REFS:+--refs $REFS}
$py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
mkdir -p "$out" .sweep/gpu
if [ "$device" = cuda ]; then nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/device.txt"; fi

common=(--init-from src/reenact/toy/model_v2 --device "$device" --batch "${BATCH:-64}" --workers "${DATA_WORKERS:-7}" --threads 1
        --time-budget "$minutes" --warmup 100 --lr 2e-4 --calibrate-steps 50 --check-every 1000
        --ckpt-every 1000)
$py -m reenact.toy.train --out .sweep/gpu/ft_cn "${common[@]}" --context-noise "$noise" > "$out/train_cn.log" 2>&1 &
$py -m reenact.toy.train --out .sweep/gpu/ft_ctl "${common[@]}" > "$out/train_ctl.log" 2>&1 &
wait
tail -n 3 "$out/train_cn.log" "$out/train_ctl.log"

$py benchmarks/toy_sweep.py "$out/sweep.jsonl" --cache .sweep/refs_det.pt --device "$device" \
    --workers "${SWEEP_WORKERS:-14}" --budget "$screen_s" $refs --variants 'base={}' 'base_s1000={"seed_offset": 1000}' \
    'ctl={"model": ".sweep/gpu/ft_ctl"}' 'ctl_s1000={"model": ".sweep/gpu/ft_ctl", "seed_offset": 1000}' \
    'cn={"model": ".sweep/gpu/ft_cn"}' 'cn_s1000={"model": ".sweep/gpu/ft_cn", "seed_offset": 1000}' \
    'ctl_o={"model": ".sweep/gpu/ft_ctl", "config": "o"}' 'cn_o={"model": ".sweep/gpu/ft_cn", "config": "o"}' \
    > "$out/sweep.log" 2>&1
$py benchmarks/toy_sweep.py "$out/sweep.jsonl" --summarise | tee "$out/summary.md"
for m in cn ctl; do tar -C .sweep/gpu -czf "$out/ft_$m.tgz" "ft_$m"; done
