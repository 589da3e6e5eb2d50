#!/usr/bin/env bash
# Run the sweep as N processes on this machine on JAX's distributed runtime:
#
#     scripts/multiprocess.sh N [sweep args...]      e.g. scripts/multiprocess.sh 2 --preset smoke
#
# Process 0 hosts the coordinator on a free local port (or $RSJAX_COORDINATOR_PORT); process i
# attacks every N-th image from the i-th and writes its own records.p<i>.jsonl into the same --out
# directory; process 0 writes the merged report once all are done. The script waits for all of
# them and exits with the first failure's status, after stopping the others (a dead process ends
# the job anyway: JAX aborts its peers after --heartbeat-timeout seconds). Running the same
# command again resumes the job. $PYTHON chooses the interpreter (default .venv/bin/python).
set -uo pipefail
cd "$(dirname "$0")/.."
usage="usage: scripts/multiprocess.sh N [sweep args...]"
N=${1:-}
if [[ ! "$N" =~ ^[1-9][0-9]*$ ]]; then
  echo "multiprocess.sh: N (number of processes) must be an integer >= 1, got '${N}'; $usage" >&2
  exit 2
fi
shift
PY=${PYTHON:-.venv/bin/python}
[[ -x "$PY" ]] || PY=$(command -v python3 || command -v python)
PORT=${RSJAX_COORDINATOR_PORT:-$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null)}
if [[ ! "$PORT" =~ ^[0-9]+$ ]]; then
  echo "multiprocess.sh: no free local port found (set RSJAX_COORDINATOR_PORT)" >&2
  exit 2
fi

pids=()
declare -A alive=()
stop_all() {
  for p in "${!alive[@]}"; do kill -TERM "$p" 2>/dev/null; done
}
trap 'stop_all; exit 130' INT TERM

for ((i = 0; i < N; i++)); do
  "$PY" experiments/sweep.py --coordinator "127.0.0.1:$PORT" --num-processes "$N" --process-id "$i" "$@" &
  pids+=($!)
  alive[$!]=$i
done

status=0
while ((${#alive[@]} > 0)); do
  done_pid=
  wait -n -p done_pid "${!alive[@]}"
  rc=$?
  [[ -z "$done_pid" ]] && break
  i=${alive[$done_pid]}
  unset "alive[$done_pid]"
  if ((rc != 0 && status == 0)); then
    status=$rc
    echo "multiprocess.sh: process $i (pid $done_pid) exited with status $rc; stopping the others" >&2
    stop_all
  fi
done
exit "$status"
