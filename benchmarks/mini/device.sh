#!/usr/bin/env bash
# How the committed DisCa-mini run was split over two GPU leases of the workplace's device tool, whose machines are
# held at most 30 minutes, run one command at most 10 minutes and return files of at most 16 MB. `run.py` is the
# run; this script only starts it in its own process session (so it outlives a command) and fetches its results.
#
#   lease 1:  device.sh teacher;  device.sh wait (until it reports done);  device.sh collect-teacher
#   lease 2:  (carry runs/mini/teacher and runs/mini/classifier.*)  device.sh rest;  device.sh wait ...;  device.sh collect
#
# Stages are skipped when their output exists, and the data are re-made from the seed on each machine, so the two
# leases compute what one uninterrupted `python -m benchmarks.mini.run --out runs/mini` computes.
set -euo pipefail
RUN=${MINI_RUN:-runs/mini}
TEACHER_SECONDS=${TEACHER_SECONDS:-1140}  # the teacher's share of lease 1
mkdir -p "$RUN"

start() {  # start run.py on the given stages in the background, in its own session
  setsid nohup python3 -m benchmarks.mini.run --out "$RUN" "$@" > "$RUN/lease.log" 2>&1 < /dev/null &
  echo $! > "$RUN/lease.pid"
  echo "started run.py $* (pid $(cat "$RUN/lease.pid")); log $RUN/lease.log"
}

case "${1:-}" in
  teacher)
    # teacher steps = what fits TEACHER_SECONDS at the throughput measured here (probe preset: full-size batches)
    python3 -m benchmarks.mini.run --out /tmp/mini-probe --preset probe --stages data,teacher > /tmp/mini-probe.log 2>&1
    rate=$(tr '\r' '\n' < /tmp/mini-probe.log | grep -o 'flow_matching: 100%.* \([0-9.]*\)it/s' | tail -1 | grep -o '[0-9.]*it/s' | tr -d 'it/s')
    steps=$(python3 -c "print(int(float('$rate') * $TEACHER_SECONDS) // 500 * 500)")
    echo "teacher throughput $rate it/s -> $steps steps in ${TEACHER_SECONDS}s"
    start --stages data,classifier,teacher --teacher-steps "$steps" ;;
  rest)
    start --stages data,cfg_distill,calibrate,meanflow_R0.2,meanflow_R1.0,predictor_mse,predictor_gan,predictor_mse_long,evaluate,embed ;;
  wait)  # up to ${2:-540} s, or until the run ends
    for _ in $(seq $(( ${2:-540} / 10 ))); do kill -0 "$(cat "$RUN/lease.pid")" 2>/dev/null || break; sleep 10; done
    tr '\r' '\n' < "$RUN/lease.log" | grep -v '^\s*$' | tail -n 12
    kill -0 "$(cat "$RUN/lease.pid")" 2>/dev/null && echo "RUNNING" || echo "DONE" ;;
  collect-teacher)
    split -b 15M "$RUN/teacher/flow_matching_dit.safetensors" "$OUT/teacher.part-"
    cp "$RUN/classifier.safetensors" "$RUN/classifier.json" "$RUN/lease.log" "$OUT/"
    tar czf "$OUT/reports.tgz" -C "$RUN" preset.json teacher/report.json teacher/stage_seconds.json ;;
  collect)
    split -b 15M "$RUN/embedded/dit.safetensors" "$OUT/dit.part-"
    cp "$RUN/results.json" "$RUN/strip.safetensors" "$RUN/embedded/predictor.safetensors" "$RUN/lease.log" \
       "$RUN/calibrate/calibration.json" "$OUT/"
    tar czf "$OUT/reports.tgz" -C "$RUN" preset.json embedded/demo.json $(cd "$RUN" && ls */report.json */stage_seconds.json) ;;
  *) echo "usage: $0 teacher | rest | wait [seconds] | collect-teacher | collect" >&2; exit 2 ;;
esac
