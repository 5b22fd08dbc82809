#!/usr/bin/env bash
# Start a local Ray head from the project's venv, for `ray job submit`:
#   GCS on 127.0.0.1:$RAY_PORT (6379), dashboard + jobs API on http://127.0.0.1:$DASHBOARD_PORT (8265).
# The head runs as `ray start --block` in the background; cluster/stop_head.sh stops exactly this head
# through its pid file (`ray stop` would stop every Ray of this user on the machine). Its own temp dir
# keeps other drivers' plain `ray.init()` from attaching to it.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
RAY_PORT="${RAY_PORT:-6379}"
DASHBOARD_PORT="${DASHBOARD_PORT:-8265}"
STATE="${RAY_HEAD_STATE:-$ROOT/runs/ray-head}"   # pid file and log
TEMP_DIR="${RAY_HEAD_TEMP_DIR:-/tmp/reidloop-ray-$RAY_PORT}"
SUBMIT="RAY_AUTH_MODE=disabled $VENV/bin/ray job submit --address http://127.0.0.1:$DASHBOARD_PORT --working-dir . -- python -m trainers.run_job --config tune_configs/synthetic.yaml"

mkdir -p "$STATE"
if [[ -f "$STATE/head.pid" ]] && kill -0 "$(cat "$STATE/head.pid")" 2>/dev/null; then
  echo "Ray head already running (pid $(cat "$STATE/head.pid")). Submit with:"
  echo "  $SUBMIT"
  exit 0
fi

export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
export PATH="$VENV/bin:$PATH"  # the jobs' `python` is the project's
nohup "$VENV/bin/ray" start --head --block --disable-usage-stats \
  --node-ip-address 127.0.0.1 --port "$RAY_PORT" --temp-dir "$TEMP_DIR" \
  --include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
  ${NUM_CPUS:+--num-cpus "$NUM_CPUS"} >"$STATE/head.log" 2>&1 &
echo $! >"$STATE/head.pid"

deadline=$((SECONDS + ${START_TIMEOUT_S:-180}))
until curl -sf "http://127.0.0.1:$DASHBOARD_PORT/api/version" >/dev/null; do
  if ! kill -0 "$(cat "$STATE/head.pid")" 2>/dev/null; then
    echo "ray start failed; the end of $STATE/head.log:" >&2
    tail -n 30 "$STATE/head.log" >&2
    rm -f "$STATE/head.pid"
    exit 1
  fi
  if ((SECONDS > deadline)); then
    echo "the jobs API on 127.0.0.1:$DASHBOARD_PORT did not answer in time; see $STATE/head.log" >&2
    exit 1
  fi
  sleep 1
done
echo "Ray head up (pid $(cat "$STATE/head.pid")): GCS 127.0.0.1:$RAY_PORT, dashboard http://127.0.0.1:$DASHBOARD_PORT"
echo "Submit the main job from the repository root with:"
echo "  $SUBMIT"
