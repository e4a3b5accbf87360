#!/usr/bin/env bash
# The main job's recipe search (research/sweep_demo_recipe.py) on a lent GPU: generates
# the built-in dataset, runs the sweep's points PARALLEL at a time (each with WORKERS data
# worker processes), stops whatever still runs at DEADLINE seconds, and packs every
# point's metrics.jsonl + status.json and the sweep summary into OUT_DIR/sweep.tar.gz.
#
#   bash research/gpu_demo_sweep.sh [OUT_DIR]    (default: $OUT, else gpu_out)
#   env: PARALLEL (4), WORKERS (3), DEADLINE (seconds, 500), POINTS ("0 1 2 ..." default all)
#
# Wheels the machine lacks go in .whl/ (see benchmarks/gpu.sh); jax and flax are the
# machine's own.
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-gpu_out}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
START=$(date +%s)
if [ -z "${NO_WHEELS:-}" ] && compgen -G ".whl/*.whl" > /dev/null; then
  SITE="$(mktemp -d /tmp/ssd_jax_site.XXXX)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 1
  export PYTHONPATH="$SITE:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export SSD_JAX_CACHE="${SSD_JAX_CACHE:-/tmp/ssd_jax_cache}"
SWEEP="${SWEEP:-research/sweep_demo_recipe.py}"
WORK="${SWEEP_DIR:-/tmp/recipe}"
PARALLEL="${PARALLEL:-4}" WORKERS="${WORKERS:-3}" DEADLINE="${DEADLINE:-500}"
{
  date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | head -2; nproc
  "$PY" -c "import jax, flax; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__)"
  "$PY" -c "
from research.sweep_demo_recipe import get_config
from ssd_jax import builders, config
tr, va = builders.build_sources(config.Settings.from_config(get_config()).data)
print('dataset', len(tr), len(va))" || exit 1
  echo "setup done after $(( $(date +%s) - START )) s"
  POINTS="${POINTS:-$("$PY" launch.py sweep --config $SWEEP --list | awk '{print $1}')}"
  END=$(( START + DEADLINE ))   # every point, whenever it starts, is stopped (SIGTERM: it checkpoints) by then
  for i in $POINTS; do echo "$i"; done | xargs -P "$PARALLEL" -I{} sh -c \
    "left=\$(( $END - \$(date +%s) )); [ \$left -gt 30 ] || { echo point {} skipped; exit 0; }; \
     timeout -s TERM \$left $PY launch.py sweep --config $SWEEP --workdir $WORK --index {} \
       --config.data.num_workers=$WORKERS > $WORK.{}.log 2>&1; echo point {} exit \$?"
  echo "points done after $(( $(date +%s) - START )) s"
  "$PY" launch.py sweep --summarize "$WORK" || true
} 2>&1 | tee "$OUT_DIR/log.txt"
mkdir -p "$WORK" && cp $WORK.*.log "$WORK"/ 2>/dev/null
tar -czf "$OUT_DIR/sweep.tar.gz" -C "$(dirname "$WORK")" --exclude=checkpoints --exclude='*tfevents*' "$(basename "$WORK")"
