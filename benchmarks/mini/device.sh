#!/usr/bin/env bash
# How the committed DisCa-mini run was split over two GPU leases of the workplace's device tool, whose machines are
# held at most 30 minutes, run one command at most 10 minutes and return files of at most 16 MB. `run.py` is the
# run; this script only starts it in its own process session (so it outlives a command) and fetches its results.
#
#   v2, lease 1:  device.sh teacher;  device.sh wait (until it reports done);  device.sh collect-teacher
#   v2, lease 2:  (carry runs/mini/teacher and runs/mini/classifier.*)  device.sh rest;  device.sh wait ...;  device.sh collect
#   v3, lease 1:  device.sh prepare;  [TEACHER_STEPS=N] device.sh teacher-ddp;  device.sh wait ...;  device.sh evaluate;
#                 device.sh collect-teacher
#   v3, lease 2:  (carry runs/v3/teacher.safetensors and runs/v3/classifier.safetensors)  device.sh restore;
#                 device.sh rest;  device.sh wait ...;  device.sh collect
#   v3, lease 3:  as lease 2, with runs/v3/lease2/cfg_distill.safetensors carried in a second call (README "v3")
#   v3, lease 4:  (carry as lease 2)  device.sh budget;  device.sh wait ...;  device.sh collect-budget
#   v3, leases 5-7:  (carry as lease 2)  device.sh served;  device.sh wait ...;  device.sh collect-served
#   roll-out training (carry .wheels only):  [ROLLOUT_LANES="0 1 2 6 12;0 1 3 7 13|--lr 2e-4 ..."] device.sh rollout;
#                 device.sh wait ...;
#                 device.sh collect-rollout
#
# Stages are skipped when their output exists, and the data are re-made from the seed on each machine, so the two
# leases compute what one uninterrupted `python -m benchmarks.mini.run --out runs/mini` computes.
set -euo pipefail
RUN=${MINI_RUN:-runs/mini}
PRESET=${MINI_PRESET:-v3}  # the v2 leases ran with MINI_PRESET=v2 (then called `full`)
TEACHER_SECONDS=${TEACHER_SECONDS:-1140}  # the teacher's share of lease 1
PROBE=${MINI_PROBE:-/tmp/mini-probe}  # the throughput probe's run folder (scratch)
CARRIED=${MINI_CARRIED:-runs/v3}  # v3, lease 2: the teacher and classifier lease 1 returned
# served_schedule.py's variants new to a lease (lease 5: the n4_plus1, dense6 and dense5 ones; lease 6: dense6_depth2,
# and the 7- and 8-call lists; lease 7: early6, early5 and the other lists with steps 0-2 full)
SERVED_VARIANTS=${SERVED_VARIANTS:-early6 early5}
export RUN PRESET
mkdir -p "$RUN"

start() {  # start run.py on the given stages in the background, in its own session
  setsid nohup python3 -m benchmarks.mini.run --out "$RUN" --preset "$PRESET" "$@" > "$RUN/lease.log" 2>&1 < /dev/null &
  echo $! > "$RUN/lease.pid"
  echo "started run.py $* (pid $(cat "$RUN/lease.pid")); log $RUN/lease.log"
}

mini() { python3 -m benchmarks.mini.run --out "$RUN" --preset "$PRESET" "$@"; }

diagnose() {  # the R-MeanFlow diagnosis (meanflow_diagnosis.py) of student $1 (R), against its CFG-distilled teacher
  python3 -m benchmarks.mini.meanflow_diagnosis --dit "$RUN/meanflow_R$1/meanflow_dit.safetensors" --R "$1" \
    --teacher "$RUN/cfg_distill/cfg_distilled_dit.safetensors" --classifier "$RUN/classifier.safetensors" \
    --preset "$PRESET" --prompts 256 --out "$RUN/diagnosis_R$1.json"
}

preflight() {  # every stage on the smoke preset on this machine's GPU, the diagnosis too: the paths only a GPU takes
  # (devices of tensors) fail here in a minute rather than after the real run's long stages
  local log="$RUN/preflight.log" RUN="$RUN-preflight" PRESET=smoke
  rm -rf "$RUN"
  if ! { mini && diagnose 0.2; } > "$log" 2>&1; then
    echo "preflight failed on the smoke preset, the real run not started: $log"; tail -n 25 "$log"; return 1
  fi
  echo "preflight: every stage and the diagnosis ran on the smoke preset"
}

rest() {  # lane 0: R-MeanFlow and the predictors that continue from predictor_mse; lane 1: MeanFlow R = 1.0, then
  # (once R-MeanFlow exists) the on-policy and frontier predictors, then the diagnosis while lane 0 evaluates
  # (on one GPU both lanes share it: a batch-64 MeanFlow step does not fill an H200)
  preflight || return 1
  mini --stages data,cfg_distill,calibrate || return 1
  ( export CUDA_VISIBLE_DEVICES=$(( $(nvidia-smi -L | wc -l) > 1 )); mini --stages meanflow_R1.0 \
      && until [ -f "$RUN/meanflow_R0.2/stage_seconds.json" ]; do sleep 5; done \
      && mini --stages predictor_on_policy,predictor_frontier && diagnose 0.2 && diagnose 1.0 ) > "$RUN/lane1.log" 2>&1 &
  CUDA_VISIBLE_DEVICES=0 mini --stages meanflow_R0.2,predictor_mse,predictor_gan,predictor_mse_long > "$RUN/lane0.log" 2>&1
  until [ -f "$RUN/predictor_frontier/stage_seconds.json" ] || ! jobs -r | grep -q .; do sleep 5; done
  CUDA_VISIBLE_DEVICES=0 mini --stages embed  # first: if the lease ends during the evaluation, collect has the demo
  CUDA_VISIBLE_DEVICES=0 mini --stages evaluate,report
  wait
}

lanes() {  # $1 (predictor_budget or served_schedule): its variants $2... trained side by side, lane i on GPU i mod the
  # GPU count (a 1-block predictor's step leaves an H200 mostly idle), then their evaluation
  mini --stages data || return 1
  local experiment="python3 -m benchmarks.mini.$1 --out $RUN --preset $PRESET" gpus lane=0
  gpus=$(nvidia-smi -L | wc -l)
  shift
  for variant in "$@"; do
    CUDA_VISIBLE_DEVICES=$(( lane % gpus )) $experiment --train "$variant" > "$RUN/lane$lane.log" 2>&1 &
    lane=$(( lane + 1 ))
  done
  wait
  CUDA_VISIBLE_DEVICES=0 $experiment --evaluate
}

launch2() {  # the training stages on every GPU of the machine (DDP; run.py splits the preset's global batch)
  if [ "$(nvidia-smi -L | wc -l)" = 1 ]; then python3 -m benchmarks.mini.run "$@"; return; fi
  accelerate launch --config_file training/configs/accelerate_ddp.yaml --num_processes "$(nvidia-smi -L | wc -l)" \
    --main_process_port 0 -m benchmarks.mini.run "$@"
}

case "${1:-}" in
  prepare)  # v3, lease 1, before the teacher: data and classifier in one process (the teacher reads them)
    mini --stages data,classifier > "$RUN/prepare.log" 2>&1 ;;
  teacher-ddp)
    # v3: the teacher on every GPU; steps = TEACHER_STEPS, or what fits TEACHER_SECONDS at the throughput a 300-step
    # probe measures
    if [ -n "${TEACHER_STEPS:-}" ]; then steps=$TEACHER_STEPS; else
      python3 -m benchmarks.mini.run --out "$PROBE" --preset probe --stages data > "$PROBE.log" 2>&1
      launch2 --out "$PROBE" --preset probe --stages teacher >> "$PROBE.log" 2>&1
      step_s=$(python3 -c "import json; print(json.load(open('$PROBE/teacher/report.json'))['step_seconds_median'])")
      steps=$(python3 -c "print(int($TEACHER_SECONDS / $step_s) // 500 * 500)")
      echo "teacher probe: median step ${step_s}s on $(nvidia-smi -L | wc -l) GPU(s) -> $steps steps in ${TEACHER_SECONDS}s"
    fi
    setsid nohup bash -c "$(declare -f launch2); launch2 --out '$RUN' --preset '$PRESET' --stages teacher --teacher-steps $steps" \
      > "$RUN/lease.log" 2>&1 < /dev/null &
    echo $! > "$RUN/lease.pid"
    echo "started the teacher (pid $(cat "$RUN/lease.pid")); log $RUN/lease.log" ;;
  teacher)
    # teacher steps = what fits TEACHER_SECONDS at the throughput measured here (probe preset: full-size batches)
    python3 -m benchmarks.mini.run --out "$PROBE" --preset probe --stages data,teacher > "$PROBE.log" 2>&1
    rate=$(tr '\r' '\n' < "$PROBE.log" | grep -o 'flow_matching: 100%.* \([0-9.]*\)it/s' | tail -1 | grep -o '[0-9.]*it/s' | tr -d 'it/s')
    steps=$(python3 -c "print(int(float('$rate') * $TEACHER_SECONDS) // 500 * 500)")
    echo "teacher throughput $rate it/s -> $steps steps in ${TEACHER_SECONDS}s"
    start --stages data,classifier,teacher --teacher-steps "$steps" ;;
  restore)  # v3, lease 2: the teacher and classifier carried in $CARRIED (runs/v3), with lease 1's stage records
    records=benchmarks/mini/logs/v3_lease1
    (cd "$CARRIED" && sha256sum -c "$OLDPWD/$records/SHA256SUMS")  # lease 1's files, unchanged
    mkdir -p "$RUN/teacher"
    cp "$CARRIED/teacher.safetensors" "$RUN/teacher/flow_matching_dit.safetensors"
    cp "$CARRIED/classifier.safetensors" "$RUN/classifier.safetensors"
    cp "$records/classifier.json" "$RUN/classifier.json"
    cp "$records/teacher_report.json" "$RUN/teacher/report.json"
    cp "$records/teacher_stage_seconds.json" "$RUN/teacher/stage_seconds.json"
    # v3, lease 3: lease 2's CFG-distilled DiT, when carried (the MeanFlow students are trained again: their init
    # changed after lease 2, and calibrate measures that init)
    if [ -f "$CARRIED/lease2/cfg_distill.safetensors" ]; then
      records=benchmarks/mini/logs/v3_lease2
      (cd "$CARRIED/lease2" && sha256sum -c --ignore-missing "$OLDPWD/$records/SHA256SUMS")
      mkdir -p "$RUN/cfg_distill"
      cp "$CARRIED/lease2/cfg_distill.safetensors" "$RUN/cfg_distill/cfg_distilled_dit.safetensors"
      cp "$records/cfg_distill_report.json" "$RUN/cfg_distill/report.json"
      cp "$records/cfg_distill_stage_seconds.json" "$RUN/cfg_distill/stage_seconds.json"
    fi ;;
  budget|served)  # v3, after lease 3 (predictor_budget.py, served_schedule.py): the teacher and classifier carried as
    # for lease 2; the R-MeanFlow student is the demo's DiT (lease 3's, checked by its sha256)
    bash "$0" restore
    (cd benchmarks/mini/weights && sed -n 's#runs/mini/meanflow_R0.2/meanflow_dit#dit#p' ../logs/v3_lease3/SHA256SUMS | sha256sum -c)
    mkdir -p "$RUN/meanflow_R0.2" && cp benchmarks/mini/weights/dit.safetensors "$RUN/meanflow_R0.2/meanflow_dit.safetensors"
    if [ "$1" = budget ]; then set -- predictor_budget x6 x6_lr4x frontier_x6; else set -- served_schedule $SERVED_VARIANTS; fi
    if [ "$1" = served_schedule ]; then  # the earlier leases' rows and curves: evaluate() adds only the new rows
      records=benchmarks/mini/logs/v3_served
      mkdir -p "$RUN/$1" && cp "$records/results.json" "$RUN/$1/"
      for report in "$records"/*_report.json; do
        variant=$(basename "$report" _report.json); mkdir -p "$RUN/$1/$variant" && cp "$report" "$RUN/$1/$variant/report.json"
      done
    fi
    setsid nohup bash -c "$(declare -f mini lanes); lanes $*" > "$RUN/lease.log" 2>&1 < /dev/null &
    echo $! > "$RUN/lease.pid"
    echo "started $1 (pid $(cat "$RUN/lease.pid")); log $RUN/lease.log, lanes $RUN/lane*.log" ;;
  collect-budget|collect-served)  # their results, reports and predictors
    folder=$([ "$1" = collect-budget ] && echo predictor_budget || echo served_schedule)
    for file in "$RUN/$folder"/*/predictor.safetensors; do cp "$file" "$OUT/$(basename "$(dirname "$file")").safetensors"; done
    tar czf "$OUT/$folder.tgz" -C "$RUN" $(cd "$RUN" && ls $folder/results.json $folder/RESULTS.md \
      $folder/*/report.json $folder/*/stage_seconds.json *.log 2>/dev/null) ;;
  rollout)  # rollout_tune.py's lanes side by side on one GPU (a 5-call roll-out at batch 32 is launch-bound: three
    # lanes ran at 1.34 s/step each, one alone at 1.0-1.3), each in its own folder (its own prompt cache); ROLLOUT_LANES
    # is ";"-separated "anchor list[|more rollout_tune flags]", ROLLOUT_FLAGS flags for every lane, each lane evaluated
    # on ROLLOUT_SEEDS; needs only the repo's demo weights and .wheels
    # (the default: stop 27's lanes)
    IFS=';' read -ra lanes <<< "${ROLLOUT_LANES:-0 1 2 6 12;0 1 2 4 10;0 1 3 6 11;0 1 2 5 10;0 1 3 7 13|--init \
benchmarks/mini/logs/rollout/dense5_650_predictor.safetensors --lr 2e-4 --tag _c300_lr2e-4}"
    # the cores split between the lanes: with torch's default (every core per process), five lanes took ~2.7 min per
    # evaluation seed (one process alone: ~18 s) and the lanes still training 6-11 s per step (stop 27, 16 cores)
    lane=0 threads=$(( $(nproc) / ${#lanes[@]} > 1 ? $(nproc) / ${#lanes[@]} : 1 ))
    for spec in "${lanes[@]}"; do
      IFS='|' read -r anchors flags <<< "$spec"
      OMP_NUM_THREADS=$threads setsid nohup python3 -m benchmarks.mini.rollout_tune --out "$RUN/rollout/lane$lane" \
        --schedules "$anchors" --steps "${ROLLOUT_STEPS:-300}" --seeds ${ROLLOUT_SEEDS:-0 1} ${ROLLOUT_FLAGS:-} $flags \
        > "$RUN/lane$lane.log" 2>&1 < /dev/null &
      echo $! >> "$RUN/lease.pids"
      lane=$(( lane + 1 ))
    done
    echo "started rollout_tune in $lane lane(s) (pids $(tr '\n' ' ' < "$RUN/lease.pids")); logs $RUN/lane*.log" ;;
  collect-rollout)  # each lane's predictor, and one archive of the reports, paired results and logs
    for file in "$RUN"/rollout/*/*/predictor.safetensors; do
      [ -f "$file" ] && cp "$file" "$OUT/$(basename "$(dirname "$file")").safetensors"; done
    tar czf "$OUT/rollout.tgz" -C "$RUN" $(cd "$RUN" && ls rollout/*/*/report.json rollout/*/*/paired*/results.json \
      rollout/*/*/paired*/RESULTS.md lane*.log 2>/dev/null) ;;
  preflight) preflight ;;
  rest)  # every stage after the teacher, then the MeanFlow diagnosis of both students; two lanes on two GPUs
    setsid nohup bash -c "$(declare -f mini diagnose preflight rest); rest" > "$RUN/lease.log" 2>&1 < /dev/null &
    echo $! > "$RUN/lease.pid"
    echo "started the rest (pid $(cat "$RUN/lease.pid")); log $RUN/lease.log, lanes $RUN/lane*.log" ;;
  wait)  # up to ${2:-540} s, or until the run (every lane of it) ends
    running() { for pid in $(cat "$RUN"/lease.pid* 2>/dev/null); do kill -0 "$pid" 2>/dev/null && return 0; done; return 1; }
    for _ in $(seq $(( ${2:-540} / 10 ))); do running || break; sleep 10; done
    for log in "$RUN"/lane*.log "$RUN/lease.log"; do [ -f "$log" ] && echo "== $log" && tr '\r' '\n' < "$log" | grep -v '^\s*$' | tail -n 6; done
    running && echo "RUNNING" || echo "DONE" ;;
  evaluate)  # every row whose models exist (after the teacher: the teacher's own row)
    mini --stages evaluate > "$RUN/evaluate.log" 2>&1
    tail -n 5 "$RUN/evaluate.log" ;;
  collect-teacher)
    # 4 files (at most 8 come back: v3's lease 1 lost its second teacher part to a ninth file)
    split -b 15M "$RUN/teacher/flow_matching_dit.safetensors" "$OUT/teacher.part-"
    cp "$RUN/classifier.safetensors" "$OUT/"
    tar czf "$OUT/reports.tgz" -C "$RUN" $(cd "$RUN" && ls preset.json classifier.json teacher/report.json \
      teacher/stage_seconds.json results.json *.log 2>/dev/null) ;;
  collect)  # at most 8 files come back: the demo's DiT in two parts, its predictor and classifier, the results, the
    # strip, and one archive of every record
    # (a run cut short by the lease's end returns what exists: the rows evaluated so far and every record)
    [ -f "$RUN/embedded/dit.safetensors" ] && split -b 15M "$RUN/embedded/dit.safetensors" "$OUT/dit.part-"
    for file in results.json strip.safetensors embedded/predictor.safetensors embedded/classifier.safetensors; do
      [ -f "$RUN/$file" ] && cp "$RUN/$file" "$OUT/"; done
    tar czf "$OUT/reports.tgz" -C "$RUN" $(cd "$RUN" && ls preset.json embedded/demo.json calibrate/calibration.json \
      */report.json */stage_seconds.json *.log diagnosis_*.json RESULTS.md 2>/dev/null) ;;
  *) echo "usage: $0 prepare | teacher-ddp | teacher | restore | preflight | rest | budget | served | rollout | wait [seconds] | evaluate | collect-teacher | collect | collect-budget | collect-served | collect-rollout" >&2
     exit 2 ;;
esac
