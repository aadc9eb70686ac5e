#!/usr/bin/env bash
# The GPU benchmarks, prepared to fit in under 10 minutes on one GPU (issue 13):
#   1. the data path on CUDA (benchmarks/data_path.py: robustfer's tensor pipeline vs PIL + DataLoader);
#   2. as many ResNet-18 cells of benchmarks/grids/ferplus_gpu.toml as fit, WORKERS at once on the GPU
#      (bench is resumable: a second call continues the grid).
# Usage: FERPLUS=path/to/ferplus OUT=dir bash benchmarks/gpu.sh
#   SMOKE=1 runs the same steps on the CPU with tiny sizes (to test this script without a GPU).
# On the lent GPU machine (nothing but the repository travels, at most 64 MiB; FERPlus is 145 MB):
#   here:  echo /.gpu_data/ >> .git/info/exclude
#          .venv/bin/python benchmarks/pack_ferplus.py pack ../shared/data/ferplus .gpu_data/ferplus.npz
#   run (carry [".gpu_data"]): python3 benchmarks/pack_ferplus.py unpack .gpu_data/ferplus.npz /tmp/ferplus &&
#          FERPLUS=/tmp/ferplus OUT=$OUT bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
FERPLUS=${FERPLUS:-../shared/data/ferplus}
OUT=${OUT:-benchmarks/out/gpu}
WORKERS=${WORKERS:-4}
BUDGET_S=${BUDGET_S:-480}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # robustfer from this checkout, installed or not
if [[ "${SMOKE:-0}" == 1 ]]; then
    DEV=cpu; LIMIT=(--limit 256); EXTRA=(--device cpu --epochs 1 --limit 128 --eval-limit 64 --input-size 48)
else
    DEV=cuda; LIMIT=(); EXTRA=()
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
echo "== data path ($DEV)"
"$PY" benchmarks/data_path.py --root "$FERPLUS" --device "$DEV" "${LIMIT[@]}" --json "$OUT/data_path.json"
echo "== ResNet-18 grid, $WORKERS cells at once, at most $BUDGET_S s"
rc=0
timeout "$BUDGET_S" "$PY" -m robustfer bench --grid benchmarks/grids/ferplus_gpu.toml --root "$FERPLUS" \
    --out "$OUT/grid" --workers "$WORKERS" --no-live "${EXTRA[@]}" || rc=$?
"$PY" -m robustfer bench --grid benchmarks/grids/ferplus_gpu.toml --root "$FERPLUS" --out "$OUT/grid" \
    --collect-only "${EXTRA[@]}"
tar czf "$OUT/grid_small_files.tgz" -C "$OUT" $(cd "$OUT" && ls grid/results.* grid/*.png grid/commands.txt grid/cells/*/{cell.json,config.json,metrics.jsonl,summary.json} 2>/dev/null) || true
echo "bench exit code $rc (124 = stopped at the time budget; rerun to continue)"
