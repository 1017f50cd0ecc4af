#!/usr/bin/env bash
# On a machine with a CUDA GPU and lpr importable (pip install -e ".[dev]", or PYTHONPATH set):
# the CUDA tests, a short training of each plate recipe with its learning curve, and predict on
# CUDA with its images/s. Prints the figures; everything it writes goes under $OUT.
#   bash scripts/gpu_check.sh            (OUT=/tmp/gpu_check by default)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
status=0
step() { echo; echo "== $*"; }

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || status=1
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())" || exit 1

step "CUDA tests"
timeout 300 python -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py || status=1

step "the CPU recipe on the GPU, 1 minute"
timeout 300 python -m lpr.train +experiment=plate trainer.accelerator=gpu trainer.devices=1 trainer.precision=bf16-mixed \
    callbacks.time_budget.minutes=1 paths.output_dir="$OUT/plate" paths.data_dir="$OUT/data" > "$OUT/plate.log" 2>&1 || status=1
tail -n 4 "$OUT/plate.log"
python scripts/learning_curve.py "$OUT/plate" --target 0.95 || status=1

step "the GPU recipe, its 3-minute budget"
timeout 480 python -m lpr.train +experiment=plate_gpu trainer.precision=bf16-mixed \
    paths.output_dir="$OUT/plate_gpu" paths.data_dir="$OUT/data" > "$OUT/plate_gpu.log" 2>&1 || status=1
tail -n 4 "$OUT/plate_gpu.log"
python scripts/learning_curve.py "$OUT/plate_gpu" --target 0.95 || status=1

step "predict on CUDA (the GPU recipe's checkpoint, its validation images)"
val=$(ls -d "$OUT"/data/synth_plates_*_6000_300_300/images/val | head -n 1)
timeout 300 python -m lpr.predict ckpt_path="$OUT/plate_gpu/checkpoints/last.ckpt" input="$val" \
    output="$OUT/predict" device=cuda batch_size=16 draw=false 2>&1 | tail -n 2 || status=1

step "training throughput on the GPU: lpr vs a bare loop vs one cached batch"
timeout 300 python scripts/bench_train.py --device cuda --experiment plate_gpu --steps 25 --warmup 8 --repeats 2 \
    trainer.precision=bf16-mixed paths.data_dir="$OUT/data" || status=1

step "predict throughput on the GPU: lpr.predict vs the bare batched forward"
timeout 240 python scripts/bench_predict.py --ckpt "$OUT/plate_gpu/checkpoints/last.ckpt" --device cuda \
    --batch-size 16 --images 300 --repeats 3 || status=1

echo
echo "gpu_check: $([ $status -eq 0 ] && echo all steps ran || echo SOME STEPS FAILED) (logs under $OUT)"
exit $status
