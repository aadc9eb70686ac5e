#!/usr/bin/env bash
# Commit the small files of every finished cell of a bench grid folder (config, metrics, summary, cell.json,
# heldout.npz; never checkpoints, logs, event files or the long image listings) and its tables, so that a later session, perhaps on
# a fresh clone, resumes the grid instead of starting over. Usage: bash benchmarks/commit_finished_cells.sh DIR
set -euo pipefail
dir=${1:?grid folder}
files=()
for s in "$dir"/cells/*/summary.json "$dir"/pretrain/summary.json; do
    [[ -e "$s" ]] || continue
    d=$(dirname "$s")
    for f in cell.json config.json metrics.jsonl summary.json heldout.npz; do
        [[ -e "$d/$f" ]] && files+=("$d/$f")
    done
done
for f in "$dir"/results.csv "$dir"/results.md "$dir"/noise_detection.csv "$dir"/commands.txt "$dir"/*.png; do
    [[ -e "$f" ]] && files+=("$f")
done
[[ ${#files[@]} -gt 0 ]] || exit 0
git add -- "${files[@]}"
if ! git diff --cached --quiet -- "${files[@]}"; then
    n=$(ls "$dir"/cells/*/summary.json 2>/dev/null | wc -l)
    git commit -qm "bench grid $dir: $n cells finished (small files only)" -- "${files[@]}" && echo "committed $n cells"
fi
