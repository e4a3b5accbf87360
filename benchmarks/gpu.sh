#!/usr/bin/env bash
# One prepared benchmark for a lent GPU (one H100/H200): SSD300-VGG16 train images/s in
# bf16 and f32 at batch 32 and 64 (data from memory), inference, MFU, the train step fed by
# the grain pipeline, the step trained from files (built-in set and VOC-size JPEGs written
# on the machine) with the augmentation on the host and on the device, the device
# augmentation's cost inside the step (batches in memory), the pipeline alone with 16
# workers, and torchvision's SSD300 train step on the same card. About 10 minutes; each part
# has its own time limit so one stuck part leaves the others' numbers.
#
#   bash benchmarks/gpu.sh [OUT_DIR]      (default: $OUT, else gpu_out)
#
# Wheels of packages the machine lacks (grain, array-record, portpicker, clu, ml_collections,
# faster-coco-eval for its Python) may be put in .whl/ at the repository root; they are
# installed to a fresh /tmp folder first. Do not carry jax or flax: use the machine's pair
# (flax 0.12.8 does not import on jax 0.11).
# Results: OUT_DIR/{jax,torch,data}.json, OUT_DIR/table.md, OUT_DIR/log.txt.
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-gpu_out}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
  SITE="$(mktemp -d /tmp/ssd_jax_site.XXXX)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 1
  export PYTHONPATH="$SITE:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
CACHE="${SSD_JAX_BENCH_CACHE:-/tmp/ssd_jax_cache}"
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | head -3
  nproc; "$PY" -c "import jax, flax; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__)"
  timeout "${JAX_LIMIT:-480}" "$PY" benchmarks/bench_gpu.py jax --out "$OUT_DIR/jax.json" --cache-dir "$CACHE" --workers 16
  echo "jax part exit $?"
  JAX_PLATFORMS=cpu timeout "${DATA_LIMIT:-45}" "$PY" benchmarks/bench_gpu.py data --out "$OUT_DIR/data.json" --cache-dir "$CACHE" --workers 16 --batches 60
  echo "data part exit $?"
  timeout "${TORCH_LIMIT:-100}" "$PY" benchmarks/bench_gpu.py torch --out "$OUT_DIR/torch.json" --steps 5 --seconds 2
  echo "torch part exit $?"
  "$PY" benchmarks/bench_gpu.py table "$OUT_DIR"/*.json | tee "$OUT_DIR/table.md"
} 2>&1 | tee "$OUT_DIR/log.txt"
