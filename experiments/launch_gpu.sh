#!/usr/bin/env bash
# Plan, then pretrain a BrainLM preset on this machine's GPU(s); nothing starts when the plan says it won't fit.
#
#   experiments/launch_gpu.sh [PRESET] [brainjax pretrain args...]     e.g.  experiments/launch_gpu.sh gpu_local --data DIR
#
# PRESET defaults to gpu_local. `--set K=V` arguments go to the plan too. Environment:
#   GPU_MEMORY_GIB  memory of one GPU (default: what the JAX runtime reports for the local GPU)
#   WORKDIR         work dir (default runs/PRESET); rerunning resumes from its latest checkpoint
#   PYTHON          interpreter with brainjax installed (default python3)
#   DRY_RUN=1       plan, then print the pretrain command instead of running it
set -euo pipefail

preset="${1:-gpu_local}"
shift || true
python="${PYTHON:-python3}"
workdir="${WORKDIR:-runs/$preset}"

sets=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --set) sets+=(--set "${args[i + 1]:?--set needs KEY=VALUE}"); i=$((i + 1)) ;;
    --set=*) sets+=("${args[i]}") ;;
  esac
done
memory=()
[[ -n "${GPU_MEMORY_GIB:-}" ]] && memory=(--device-memory "$GPU_MEMORY_GIB")

if ! "$python" -m brainjax.cli plan --preset "$preset" --platform gpu "${memory[@]}" "${sets[@]}"; then
  echo "launch_gpu.sh: the plan for $preset does not fit (or the config is invalid); not launching" >&2
  exit 1
fi

command=("$python" -m brainjax.cli pretrain --preset "$preset" --workdir "$workdir" "$@")
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${command[@]}"
  echo
  exit 0
fi
exec "${command[@]}"
