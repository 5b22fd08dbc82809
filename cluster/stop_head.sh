#!/usr/bin/env bash
# Stop the Ray head started by cluster/start_head.sh, and only that one: it runs in its own process
# group (setsid), so SIGTERM to its `ray start --block` shuts it down and whatever of the group is
# left after a grace period gets SIGKILL. (`ray stop` is not used: it stops every Ray of this user
# on the machine.)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${RAY_HEAD_STATE:-$ROOT/runs/ray-head}"
PIDFILE="$STATE/head.pid"
if [[ ! -s "$PIDFILE" ]]; then
  echo "no head started by cluster/start_head.sh ($PIDFILE missing)"
  exit 0
fi
pid="$(cat "$PIDFILE")"
kill -TERM "$pid" 2>/dev/null || true
deadline=$((SECONDS + ${STOP_TIMEOUT_S:-60}))
while kill -0 -- "-$pid" 2>/dev/null; do
  if ((SECONDS > deadline)); then
    echo "head processes (group $pid) still up after SIGTERM; sending SIGKILL" >&2
    kill -KILL -- "-$pid" 2>/dev/null || true
    break
  fi
  sleep 0.5
done
rm -f "$PIDFILE"
echo "Ray head (pid $pid) stopped"
