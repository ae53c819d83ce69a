#!/usr/bin/env bash
# The Track 1 pipeline end to end: prepare -> pretrain -> train -> fewshot -> score -> submit -> export
# (pretrain, fewshot and export only when configured; export: the export.top_k best codes, replaced on a re-run).
#
#   bash run.sh                                   # embedded default (Fashion-MNIST, CPU)
#   bash run.sh -c configs/finetune.yaml          # pretrain the full network, then the supernet from it
#   bash run.sh --config configs/imagenet.yaml -o data.root=/data/ILSVRC2012
#   ARCH_LIST=CVPR_2022_NAS_Track1_test.json bash run.sh
#   NPROC=8 bash run.sh --config configs/imagenet.yaml   # paddle.distributed.launch, cores/NPROC threads a rank
#   DEVICE=gpu bash run.sh --setup                # install requirements-gpu.txt (auto when nvidia-smi sees a GPU)
#   NPROC=8 bash run.sh --preflight -c configs/imagenet.yaml -o data.root=...   # checks before a long run
#   bash run.sh --from score                      # redo score and submit
#   bash run.sh --setup                           # only create .venv and install requirements
#
# Each stage leaves a marker in <run dir>/stages/; a re-run skips finished stages and resumes an
# unfinished one from its checkpoints. A marker records the exact command, so changing the
# config or the overrides re-runs the stage instead of skipping it.
set -euo pipefail
cd "$(dirname "$0")"

CONFIG=configs/default.yaml
FROM=prepare
FROM_GIVEN=0
SETUP_ONLY=0
PREFLIGHT=0
OVERRIDES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config|-c) CONFIG="$2"; shift 2 ;;
    --from) FROM="$2"; FROM_GIVEN=1; shift 2 ;;
    -o) OVERRIDES+=("-o" "$2"); shift 2 ;;
    --setup) SETUP_ONLY=1; shift ;;
    --preflight) PREFLIGHT=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument '$1' (see bash run.sh --help)" >&2; exit 2 ;;
  esac
done
STAGES=(prepare pretrain train fewshot score submit export)
case " ${STAGES[*]} " in *" $FROM "*) ;; *) echo "run.sh: --from must be one of: ${STAGES[*]}" >&2; exit 2 ;; esac
[ -f "$CONFIG" ] || { echo "run.sh: config file '$CONFIG' not found" >&2; exit 2; }
NPROC=${NPROC:-1}  # processes on this machine (paddle.distributed.launch's --nproc_per_node)
case "$NPROC" in
  *[!0-9]*|0*) echo "run.sh: NPROC must be a whole number of processes, at least 1, got '$NPROC'" >&2; exit 2 ;;
esac
if [ -n "${ARCH_LIST:-}" ]; then
  [ -f "$ARCH_LIST" ] || { echo "run.sh: ARCH_LIST '$ARCH_LIST' not found" >&2; exit 2; }
  OVERRIDES+=("-o" "score.arch_list=$ARCH_LIST")
fi

# --- environment: a project-local virtualenv, reinstalled when its requirements file changes ----
# DEVICE=cpu | gpu | auto: gpu installs requirements-gpu.txt (paddlepaddle-gpu instead of the CPU
# wheel); auto picks gpu when nvidia-smi lists a GPU. The device set up is recorded in $VENV/.device
# and kept by every later command: the wheels are swapped only when DEVICE is given.
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
if [ -z "${DEVICE:-}" ] && [ -x "$PY" ] && [ -f "$VENV/.device" ]; then DEVICE=$(cat "$VENV/.device"); fi
DEVICE=${DEVICE:-auto}
if [ "$DEVICE" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then DEVICE=gpu; else DEVICE=cpu; fi
fi
case "$DEVICE" in
  cpu) REQUIREMENTS=requirements.txt; OTHER_WHEEL=paddlepaddle-gpu ;;
  gpu) REQUIREMENTS=requirements-gpu.txt; OTHER_WHEEL=paddlepaddle ;;
  *) echo "run.sh: DEVICE must be cpu, gpu or auto" >&2; exit 2 ;;
esac
req_hash=$(sha256sum "$REQUIREMENTS" | cut -c1-16)
if [ ! -x "$PY" ] || [ "$(cat "$VENV/.requirements" 2>/dev/null)" != "$req_hash" ]; then
  echo "[run.sh] setting up $VENV for $DEVICE ($REQUIREMENTS)"
  python3 -m venv "$VENV"
  "$PY" -m pip install --quiet --upgrade pip
  "$PY" -m pip uninstall --quiet --yes "$OTHER_WHEEL" >/dev/null 2>&1 || true  # both provide `paddle`
  "$PY" -m pip install --quiet -r "$REQUIREMENTS"
  echo "$req_hash" > "$VENV/.requirements"
fi
echo "$DEVICE" > "$VENV/.device"
[ "$SETUP_ONLY" = 1 ] && exit 0

# Threads: each process takes run.threads, or its share of the cores among the NPROC local ranks
# (track1/pipeline/runtime.py); an exported OMP_NUM_THREADS wins.
# Unchecked here: checking imports Paddle, before the thread count is set. Each stage checks the config.
RUN_DIR=$("$PY" -c 'import sys; from track1.pipeline.config import load_config, run_dir
o = [a for a in sys.argv[2:] if a != "-o"]
print(run_dir(load_config(sys.argv[1], o, checked=False)))' "$CONFIG" "${OVERRIDES[@]}")
mkdir -p "$RUN_DIR/stages"

launch() {  # the training stages, score and preflight run under paddle.distributed.launch when NPROC > 1 (score: a shard per rank)
  if [ "$NPROC" -gt 1 ] && { [ "$1" = train ] || [ "$1" = pretrain ] || [ "$1" = fewshot ] || [ "$1" = score ] || [ "$1" = preflight ]; }; then
    # LAUNCH_ARGS passes more launcher options, e.g. "--nnodes 2 --ips 10.0.0.1,10.0.0.2".
    "$PY" -m paddle.distributed.launch --nproc_per_node "$NPROC" ${LAUNCH_ARGS:-} --log_dir "$RUN_DIR/launch_log/$1" \
      tools/launch.py "$@"
  else
    "$PY" -m track1 "$@"
  fi
}

if [ "$PREFLIGHT" = 1 ]; then  # the checks only, at the config's sizes, with NPROC ranks
  launch preflight -c "$CONFIG" "${OVERRIDES[@]}"
  exit $?
fi

started=0
for stage in "${STAGES[@]}"; do
  [ "$stage" = "$FROM" ] && started=1
  [ "$started" = 1 ] || continue
  marker="$RUN_DIR/stages/$stage.done"
  args=("$stage" -c "$CONFIG" "${OVERRIDES[@]}")
  { [ "$stage" = train ] || [ "$stage" = pretrain ]; } && args+=(--resume)
  [ "$stage" = export ] && args+=(--force)  # the stage runs again only when its inputs changed
  signature="${args[*]}"
  if ! { [ "$FROM_GIVEN" = 1 ] && [ "$FROM" = "$stage" ]; } && [ -f "$marker" ] && [ "$(cat "$marker")" = "$signature" ]; then
    echo "[run.sh] $stage: done earlier ($marker), skipping"
    continue
  fi
  rm -f "$marker"
  echo "[run.sh] $stage"
  launch "${args[@]}"
  echo "$signature" > "$marker"
done
echo "[run.sh] finished: $RUN_DIR"
