#!/bin/sh
# Every benchmark of README.rst's Performance table, one after another (run it on a
# quiet machine: nothing else busy).  Each prints its table to bench/results/NAME.txt
# and writes bench/results/NAME.json.  Usage: sh bench/run_all.sh [PYTHON]
set -e
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
R=bench/results
mkdir -p "$R"
run() {
    name=$1
    shift
    echo "== $name: $*"
    "$PY" "$@" --json "$R/$name.json" | tee "$R/$name.txt"
}
run classic-ws-1 bench/throughput.py
run classic-ws-10 bench/throughput.py --batch 10
run classic-sse-1 bench/throughput.py --transport serverSentEvents
run classic-lp-10 bench/throughput.py --transport longPolling --batch 10
run core-1 bench/core_throughput.py
run core-10 bench/core_throughput.py --batch 10 --lp-n 50000
run core-stream bench/core_stream.py
run peers bench/peer.py
run invoke bench/invoke.py
run connections bench/connections.py
