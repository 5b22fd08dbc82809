#!/usr/bin/env bash
# Start a local Ray head from the project's venv, for `ray job submit`:
#   GCS on 127.0.0.1:$RAY_PORT (6379), dashboard + jobs API on http://127.0.0.1:$DASHBOARD_PORT (8265).
# The head runs as `ray start --block` in the background; cluster/stop_head.sh stops exactly this head
# through its pid file (`ray stop` would stop every Ray of this user on the machine). Its own temp dir
# keeps other drivers' plain `ray.init()` from attaching to it.
# Ray's token authentication is on: services/ray_auth.py creates the token once (mode 0600, Ray's default
# ~/.ray/auth_token, or $RAY_AUTH_TOKEN_PATH; never inside the repository) and prints only its path.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
RAY_PORT="${RAY_PORT:-6379}"
DASHBOARD_PORT="${DASHBOARD_PORT:-8265}"
STATE="${RAY_HEAD_STATE:-$ROOT/runs/ray-head}"   # pid file and log
TEMP_DIR="${RAY_HEAD_TEMP_DIR:-/tmp/reidloop-ray-$RAY_PORT}"
TOKEN="$(cd "$ROOT" && "$VENV/bin/python" -m services.ray_auth)"   # the token file's path
# The job runs in a copy of the working dir: absolute output paths keep its results in this checkout.
SUBMIT="RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$TOKEN $VENV/bin/ray job submit --address http://127.0.0.1:$DASHBOARD_PORT --working-dir . -- python -m trainers.run_job --config tune_configs/synthetic.yaml --set output_dir=$ROOT/runs/synthetic --set ray.storage_path=$ROOT/runs/ray"

mkdir -p "$STATE"
if [[ -f "$STATE/head.pid" ]] && kill -0 "$(cat "$STATE/head.pid")" 2>/dev/null; then
  echo "Ray head already running (pid $(cat "$STATE/head.pid")). Submit with:"
  echo "  $SUBMIT"
  exit 0
fi

# The jobs API answers with our token (the token goes in a header read from a pipe, not in curl's argv).
api_up() { printf 'Authorization: Bearer %s\n' "$(<"$TOKEN")" | curl -sf -H @- "http://127.0.0.1:$DASHBOARD_PORT/api/version" >/dev/null; }

if curl -s -o /dev/null "http://127.0.0.1:$DASHBOARD_PORT/api/version"; then   # any HTTP answer
  echo "another Ray dashboard already answers on 127.0.0.1:$DASHBOARD_PORT; choose DASHBOARD_PORT and RAY_PORT" >&2
  exit 1
fi

export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$TOKEN" RAY_USAGE_STATS_ENABLED=0
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0  # no Serve here: stop at once on SIGTERM
export PATH="$VENV/bin:$PATH"                   # the jobs' `python` is the project's
rm -f "$STATE/head.pid"
# setsid: the head gets its own session and process group (pgid = the pid written to head.pid).
setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$STATE/head.pid" \
  "$VENV/bin/ray" start --head --block --disable-usage-stats \
  --node-ip-address 127.0.0.1 --port "$RAY_PORT" --temp-dir "$TEMP_DIR" \
  --include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
  ${NUM_CPUS:+--num-cpus "$NUM_CPUS"} </dev/null >"$STATE/head.log" 2>&1 &

deadline=$((SECONDS + ${START_TIMEOUT_S:-180}))
until api_up; do
  if [[ -s "$STATE/head.pid" ]] && ! kill -0 "$(cat "$STATE/head.pid")" 2>/dev/null; then
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
