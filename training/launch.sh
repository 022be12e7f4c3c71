#!/bin/bash
# One launcher for every training round: `bash training/launch.sh ROUND [NAME ...]` starts ROUND's runs as
# training/rounds.tsv lists them (ROUND|NAME|GPU|FLAGS; only the NAMEs given, if any), each in the background on
# its GPU, then prints their evaluations; each run leaves $OUT/NAME.tar (model, log.jsonl, config.json, output).
# Run it from the repository root on the GPU machine (the device tool's $OUT is the folder that comes back).
#
#   INIT=DIR    the fixtures a round continues, $INIT/NAME (default: .scratch/init; README.md says which)
#   RESUME=1    continue each run's checkpoint left in /tmp/runs by the call before on this still-warm machine,
#               for runs whose flags include --resume: one schedule across several calls
#   ROUNDS=F    another table of runs in rounds.tsv's format (e.g. a new round's, before it is added there)
#   DRY=1       print the runs (NAME|GPU|FLAGS) and stop
#
# It installs vlmzip and the pinned transformers wheels (.whl/, carried to the device: `pip download --no-deps -d
# .whl transformers==5.24.0 tokenizers==0.23.3 safetensors==0.8.0`; not huggingface_hub, whose pinned 2.x imports
# httpx2, which the device image lacks) into /tmp, emptied first (a warm machine keeps /tmp, and pip --target
# adds, it does not remove), and imports the trainer before starting anything, so a broken install fails in
# seconds. The runs start in /tmp, not the repository root, whose vlmzip/ and kernels/ would shadow the installed
# package and transformers' `kernels`; the trainer is copied beside the installed package.
set -u
ROUND=${1:?usage: bash training/launch.sh ROUND [NAME ...] (rounds in training/rounds.tsv)}; shift
ROUNDS=${ROUNDS:-training/rounds.tsv}; INIT=${INIT:-$PWD/.scratch/init}; RESUME=${RESUME:-}; OUT=${OUT:-/tmp/out}
RUNS=()
while IFS='|' read -r round name gpu flags; do
  [ "$round" = "$ROUND" ] || continue
  if [ $# -gt 0 ] && [[ " $* " != *" $name "* ]]; then continue; fi
  RUNS+=("$name|$gpu|${flags//\$INIT/$INIT}")
done < <(grep -v '^#' "$ROUNDS")
[ ${#RUNS[@]} -gt 0 ] || { echo "no runs of round $ROUND${*:+ named $*} in $ROUNDS"; exit 1; }
if [ -n "${DRY:-}" ]; then printf '%s\n' "${RUNS[@]}"; exit 0; fi
mkdir -p "$OUT"
rm -rf /tmp/site && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
rm -rf /tmp/vz && python3 -m pip install -q --no-deps --no-build-isolation --no-index --no-compile --target /tmp/vz . || exit 1
cp -r training /tmp/vz/training
export PYTHONPATH=/tmp/vz:/tmp/site PYTHONUNBUFFERED=1
mkdir -p /tmp/runs && cd /tmp || exit 1
python3 -c "import training.loop; from transformers import AutoModelForImageTextToText" || exit 1
for r in "${RUNS[@]}"; do IFS='|' read -r name gpu args <<< "$r"
  if [ -n "$RESUME" ]; then  # a fresh machine has no checkpoint to resume
    [ -f "/tmp/runs/$name/checkpoint.pt" ] || { echo "RESUME=1: no checkpoint of $name here (a fresh machine): continue with --init on the last model"; exit 1; }
  else rm -rf "/tmp/runs/$name"; fi
  # $args is split on purpose: it is the run's flags
  ( CUDA_VISIBLE_DEVICES=$gpu python3 -m training train $args --out /tmp/runs/$name > /tmp/runs/$name.txt 2>&1
    cp /tmp/runs/$name.txt /tmp/runs/$name/
    tar -cf "$OUT/$name.tar" -C /tmp/runs/$name model log.jsonl config.json $name.txt ) &
done
sleep 120; for r in "${RUNS[@]}"; do IFS='|' read -r name _ _ <<< "$r"; echo "== $name"; grep -v Writing /tmp/runs/$name.txt | tail -2; done
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
wait
for r in "${RUNS[@]}"; do IFS='|' read -r name _ _ <<< "$r"; echo "== $name"; grep -E "eval|stopped|Error|skipped" /tmp/runs/$name.txt | tail -9; tail -1 /tmp/runs/$name.txt; done
ls -la "$OUT"
