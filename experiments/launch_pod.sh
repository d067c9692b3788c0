#!/usr/bin/env bash
# Plan, then start a BrainLM preset on every worker of a Cloud TPU slice (tpu_scripts/launch.py run); nothing
# starts when the plan says it won't fit. Create and set up the slice first (tpu_scripts/README.md).
#
#   NAME=bj-v4 ZONE=us-central2-b WORKDIR=gs://BUCKET/runs/pod_111m \
#     experiments/launch_pod.sh pod_111m v4-32 [brainjax pretrain args...]
#   NAME=bj-v5e ZONE=us-west4-a QUEUED=1 WORKDIR=gs://BUCKET/runs/pod_650m \
#     experiments/launch_pod.sh pod_650m v5litepod-256
#
# `--set K=V` arguments go to the plan too. Environment:
#   NAME, ZONE, WORKDIR  required (the slice, its zone, a gs:// work dir every host shares)
#   PROJECT              Google Cloud project (default: gcloud's)
#   QUEUED=1             the slice is a queued resource
#   TPU_MEMORY_GIB       HBM per chip (default: v4 32, v5litepod 16, v5p 95)
#   PYTHON               local interpreter with brainjax installed (default python3)
#   DRY_RUN=1            plan, then print the gcloud commands (launch.py --dry-run) instead of running them
set -euo pipefail

preset="${1:?usage: launch_pod.sh PRESET ACCELERATOR [brainjax pretrain args...]}"
accelerator="${2:?usage: launch_pod.sh PRESET ACCELERATOR [brainjax pretrain args...]}"
shift 2
python="${PYTHON:-python3}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
launch=("$python" "$here/tpu_scripts/launch.py")

# "v4-32: 4 hosts, 16 chips" -> 16 (JAX sees one device per chip: a v4 chip's two TensorCores act as one)
chips="$("${launch[@]}" hosts "$accelerator" | sed -E 's/.* ([0-9]+) chips$/\1/')"
case "$accelerator" in
  v4-*) default_gib=32 ;;
  v5litepod-*) default_gib=16 ;;
  v5p-*) default_gib=95 ;;
  *) default_gib="" ;;
esac
gib="${TPU_MEMORY_GIB:-$default_gib}"

sets=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --set) sets+=(--set "${args[i + 1]:?--set needs KEY=VALUE}"); i=$((i + 1)) ;;
    --set=*) sets+=("${args[i]}") ;;
  esac
done

if ! "$python" -m brainjax.cli plan --preset "$preset" --platform tpu --devices "$chips" \
    --device-memory "${gib:?set TPU_MEMORY_GIB for $accelerator}" "${sets[@]}"; then
  echo "launch_pod.sh: the plan for $preset on $accelerator does not fit (or the config is invalid); not launching" >&2
  exit 1
fi

target=(--name "${NAME:?set NAME (the TPU VM or queued resource)}" --zone "${ZONE:?set ZONE}")
[[ -n "${PROJECT:-}" ]] && target+=(--project "$PROJECT")
[[ "${QUEUED:-0}" == 1 ]] && target+=(--queued)
[[ "${DRY_RUN:-0}" == 1 ]] && target+=(--dry-run)
exec "${launch[@]}" run "${target[@]}" --accelerator "$accelerator" --workdir "${WORKDIR:?set WORKDIR (gs://...)}" \
  -- brainjax pretrain --preset "$preset" "$@"
