#!/usr/bin/env bash
# One prepared benchmark for a lent GPU (one H100/H200): SSD300-VGG16 train images/s in
# bf16 and f32 at batch 32 and 64 (data from memory), inference, MFU, the train step fed by
# the grain pipeline, the step trained from files (built-in set and VOC-size JPEGs written
# on the machine) with the augmentation on the host and on the device, the device
# augmentation's cost inside the step (batches in memory), the pipeline alone with 16
# workers, and torchvision's SSD300 train step on the same card. Each part has its own time
# limit so one stuck part leaves the others' numbers.
#
#   bash benchmarks/gpu.sh [OUT_DIR]      (default: $OUT, else gpu_out; everything: more than
#                                         one 10-minute device call: split it with the knobs below)
#
# Knobs (environment): JAX_ARGS, extra arguments of the first jax run (e.g. "--parts
# train,files,augcost --batch-sizes 32"); JAX64_ARGS, when set, a second jax run with these
# arguments (its rows join the same table); SKIP, parts left out ("torch,data");
# JAX_LIMIT / JAX64_LIMIT / DATA_LIMIT / TORCH_LIMIT, seconds. The "from files" profile,
# which fits one 10-minute call on one H200 (about 5 minutes):
#
#   SKIP=torch,data JAX_ARGS="--parts train,files,augcost --batch-sizes 32" \
#   JAX64_ARGS="--parts train,files --batch-sizes 64 --files voc" bash benchmarks/gpu.sh
#
# Wheels of packages the machine lacks (grain, array-record, portpicker, clu, ml_collections,
# faster-coco-eval for its Python) may be put in .whl/ at the repository root; they are
# installed to a fresh /tmp folder first. Do not carry jax or flax: use the machine's pair
# (flax 0.12.8 does not import on jax 0.11).
# Results: OUT_DIR/{jax,more_jax,torch,data}.json, OUT_DIR/table.md, OUT_DIR/log.txt.
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
SKIP="${SKIP:-}"
# Identical programs (the host-augmentation rows of both file kinds) compile once.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/ssd_jax_xla_cache}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-1}"
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | head -3
  nproc; "$PY" -c "import jax, flax; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__)"
  # shellcheck disable=SC2086  # JAX_ARGS / JAX64_ARGS are word lists
  timeout "${JAX_LIMIT:-900}" "$PY" benchmarks/bench_gpu.py jax --out "$OUT_DIR/jax.json" --cache-dir "$CACHE" --workers 16 ${JAX_ARGS:-}
  echo "jax part exit $?"
  if [ -n "${JAX64_ARGS:-}" ]; then
    # shellcheck disable=SC2086
    timeout "${JAX64_LIMIT:-300}" "$PY" benchmarks/bench_gpu.py jax --out "$OUT_DIR/more_jax.json" --cache-dir "$CACHE" --workers 16 $JAX64_ARGS
    echo "second jax part exit $?"
  fi
  case ",$SKIP," in *,data,*) ;; *)
    JAX_PLATFORMS=cpu timeout "${DATA_LIMIT:-45}" "$PY" benchmarks/bench_gpu.py data --out "$OUT_DIR/data.json" --cache-dir "$CACHE" --workers 16 --batches 60
    echo "data part exit $?" ;; esac
  case ",$SKIP," in *,torch,*) ;; *)
    timeout "${TORCH_LIMIT:-100}" "$PY" benchmarks/bench_gpu.py torch --out "$OUT_DIR/torch.json" --steps 5 --seconds 2
    echo "torch part exit $?" ;; esac
  "$PY" benchmarks/bench_gpu.py table "$OUT_DIR"/*.json | tee "$OUT_DIR/table.md"
} 2>&1 | tee "$OUT_DIR/log.txt"
