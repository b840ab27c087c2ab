#!/bin/bash
# Multi-worker training on this host: N processes of train_evaluate_asl2.py joined by
# tf.distribute.MultiWorkerMirroredStrategy (--distribute=multi_worker) over free 127.0.0.1
# ports, each with its TF_CONFIG. A rehearsal of a cluster job, and the way to test one.
# Usage: bash test/train_multi_worker.sh [--workers=N] --dataset=FOLDER [flags of train_evaluate_asl2.py]
TEST_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ENTRY="$(dirname "$TEST_DIR")/train_evaluate_asl2.py"
source "$TEST_DIR/processes.sh" || exit 1

usage() {
    cat <<EOF
usage: bash train_multi_worker.sh [--workers=N] [--flag=value ...]

Starts N workers of train_evaluate_asl2.py on 127.0.0.1, each with TF_CONFIG naming the
cluster (every worker's address) and its own task index, and --distribute=multi_worker
followed by the other flags, the same for every worker. Worker 0 is the chief.
Waits for all; when one fails, stops the others and exits with its exit code.

parameter explain:
    --workers                number of worker processes, default 2
    --<flag>=<value>         flags of train_evaluate_asl2.py (e.g. --dataset=... --result=...)
    -h/--help                show help message

environment:
    PYTHON                   interpreter, default the repo's .venv/bin/python if present, else python3
    OUTPUT_ROOT              output root, default test/output; worker i logs to
                             \$OUTPUT_ROOT/multi_worker/worker_i.log
    STOP_GRACE_SECONDS       seconds between SIGTERM and SIGKILL when stopping workers, default 30
EOF
}

fail_usage() {  # message
    echo "error: $1" >&2
    exit 2
}

workers=2
forwarded=()
for arg in "$@"; do
    case "$arg" in
        -h|--help) usage; exit 0 ;;
        --workers=*) workers="${arg#*=}" ;;
        --distribute|--distribute=*) fail_usage "$arg: this script trains with --distribute=multi_worker" ;;
        --?*) forwarded+=("$arg") ;;
        *) fail_usage "unexpected argument '$arg'; flags take the form --name=value (see -h)" ;;
    esac
done
case "$workers" in
    ''|*[!0-9]*|0*) fail_usage "--workers must be a whole number from 1, got '$workers'" ;;
esac

OUTPUT_ROOT="${OUTPUT_ROOT:-$TEST_DIR/output}"
PYTHON="$(proc_pick_python)"
log_dir="$OUTPUT_ROOT/multi_worker"
mkdir -p "$log_dir" || { echo "error: cannot create output folder $log_dir" >&2; exit 1; }
rm -f "$log_dir"/worker_*.log
# Every port is held open until all are chosen, so that they differ.
ports="$("$PYTHON" - "$workers" <<'EOF'
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(('127.0.0.1', 0))
print(' '.join(str(s.getsockname()[1]) for s in sockets))
EOF
)" || { echo "error: cannot find $workers free ports on 127.0.0.1 with $PYTHON" >&2; exit 1; }
read -r -a ports <<< "$ports"
addresses="$(printf '"127.0.0.1:%s", ' "${ports[@]}")"
cluster="{\"worker\": [${addresses%, }]}"
. "$TEST_DIR/malloc.sh"

for ((i = 0; i < workers; i++)); do
    tf_config="{\"cluster\": $cluster, \"task\": {\"type\": \"worker\", \"index\": $i}}"
    log="$log_dir/worker_$i.log"
    cmd=("$PYTHON" "$ENTRY" --distribute=multi_worker "${forwarded[@]}")
    { printf 'TF_CONFIG=%q\nCommand:' "$tf_config"; printf ' %q' "${cmd[@]}"; printf '\n'; } > "$log"
    echo "Starting worker $i of $workers on 127.0.0.1:${ports[i]}; log: $log"
    proc_start "worker $i" "$log" env TF_CONFIG="$tf_config" "${cmd[@]}"
done
proc_wait_all
echo "All $workers workers finished; logs in $log_dir"
