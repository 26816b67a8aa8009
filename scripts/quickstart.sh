#!/usr/bin/env bash
# Set up, then the main job on built-in demo data: generate a demo category, build its bank with the
# default method (rgb/fpfh: late fusion, scored on the part), calibrate its threshold (1% FRR), evaluate it
# and print the table. The RGB backbone's ImageNet weights come with the install (no network needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

export PATCHBANK_DATA_ROOT=${PATCHBANK_DATA_ROOT:-$PWD/demo/data}
export PATCHBANK_BANKS=${PATCHBANK_BANKS:-$PWD/demo/banks}
category=${DEMO_CATEGORY:-puck}

.venv/bin/patchbank make-demo-data "$PATCHBANK_DATA_ROOT" --categories "$category" --train 30 --validation 8 --test 6 --size 400
.venv/bin/build-bank --category "$category" --calibrate

# Serve the demo bank (left running) and score one sample through it with the client CLI.
port=${DEMO_PORT:-8000}
pidfile=demo/serve.pid
if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then kill "$(cat "$pidfile")"; sleep 2; fi
nohup .venv/bin/patchbank serve --banks "$PATCHBANK_BANKS" --port "$port" > demo/serve.log 2>&1 &
echo $! > "$pidfile"
.venv/bin/python - "$port" <<'PY'
import sys, time, httpx
url = f"http://127.0.0.1:{sys.argv[1]}/readyz"
for _ in range(600):
    try:
        if httpx.get(url, timeout=2).status_code == 200:
            sys.exit(0)
    except httpx.TransportError:
        pass
    time.sleep(0.5)
sys.exit("the service did not become ready: see demo/serve.log")
PY
sample=$PATCHBANK_DATA_ROOT/$category/test/hole
.venv/bin/score --url "http://127.0.0.1:$port" --category "$category" --rgb "$sample/rgb/000.png" --xyz "$sample/xyz/000.tiff"
echo "service running at http://127.0.0.1:$port (console: open it in a browser; API docs: /docs; logs: demo/serve.log); stop it with: kill \$(cat $pidfile)"
