# Runs the processes of one training job together and stops them together.
#
# Sourced, not run, by common.sh (the ModelZoo scripts) and train_multi_worker.sh.
#   proc_pick_python                  prints the interpreter to start
#   proc_start LABEL LOG COMMAND...   starts COMMAND in the background, output appended to LOG
#   proc_wait_all                     waits for all of them; returns 0 when all exited 0
#
# When one process fails, proc_wait_all stops the others and exits the script with that
# process's exit code, after an error line naming it and the end of its log. A data-parallel job
# cannot go on without one of its processes: the others would wait for it in their next
# collective (HCCL or gRPC all-reduce) until a timeout far away, or forever.
#
# Stopping sends SIGTERM (the signal a scheduler preempts with, which the entry answers by
# saving a checkpoint) to the process group of each one still running, then SIGKILL to those
# left after $STOP_GRACE_SECONDS (default 30). A SIGINT, SIGTERM or SIGHUP to the script is passed
# on the same way, so that no process is left behind, blocked.

proc_pids=() proc_labels=() proc_logs=() proc_status=()

# The interpreter: $PYTHON, else the repo's .venv/bin/python if present, else python3.
PROC_VENV_PYTHON="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/python"
proc_pick_python() {
    if [ -n "${PYTHON:-}" ]; then
        printf '%s' "$PYTHON"
    elif [ -x "$PROC_VENV_PYTHON" ]; then
        printf '%s' "$PROC_VENV_PYTHON"
    else
        printf '%s' python3
    fi
}

# Passes a signal received by the script on to the processes, then exits as killed by it.
proc_interrupted() {  # signal name
    trap - INT TERM HUP
    echo "error: interrupted (SIG$1); stopping the training processes" >&2
    proc_stop "$1"
    exit $((128 + $(kill -l "$1")))
}

proc_start() {  # label log command...
    local label="$1" log="$2"
    shift 2
    if [ "${#proc_pids[@]}" -eq 0 ]; then
        trap 'proc_interrupted INT' INT
        trap 'proc_interrupted TERM' TERM
        trap 'proc_interrupted HUP' HUP
    fi
    # Job control gives the process a group of its own, so that a stop reaches whatever it
    # starts; without it, bash would also start it with SIGINT ignored.
    set -m
    "$@" >> "$log" 2>&1 < /dev/null &
    set +m
    proc_pids+=("$!") proc_labels+=("$label") proc_logs+=("$log") proc_status+=('')
}

# Sends a signal to every process still running; SIGKILL to those left after the grace time.
proc_stop() {  # signal name
    local i signalled=()
    for i in "${!proc_pids[@]}"; do
        [ -z "${proc_status[i]}" ] || continue
        kill -"$1" -- "-${proc_pids[i]}" 2>/dev/null && signalled+=("$i")
    done
    [ "${#signalled[@]}" -gt 0 ] || return 0
    local groups=()
    for i in "${signalled[@]}"; do groups+=("-${proc_pids[i]}"); done
    set -m
    { sleep "${STOP_GRACE_SECONDS:-30}"; kill -KILL -- "${groups[@]}" 2>/dev/null; } &
    set +m
    local timer=$!
    for i in "${signalled[@]}"; do
        wait "${proc_pids[i]}" 2>/dev/null  # no "Killed" notice from bash: this script killed it
        proc_status[i]=$?
    done
    kill -- "-$timer" 2>/dev/null
    wait "$timer" 2>/dev/null
    return 0
}

# Returns when a process may have ended: at once with `wait -n`, which bash has from 4.3 on;
# older ones (CentOS 7 has 4.2) look once a second.
if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] >= 403)); then
    proc_wait_any() { wait -n; }
else
    proc_wait_any() { sleep 1; }
fi

# Prints the end of a process's log on stderr.
proc_tail() {  # index
    echo "---- last lines of ${proc_logs[$1]} ----" >&2
    tail -n 15 "${proc_logs[$1]}" >&2
}

proc_wait_all() {
    local i status left="${#proc_pids[@]}"
    while [ "$left" -gt 0 ]; do
        proc_wait_any
        for i in "${!proc_pids[@]}"; do
            [ -z "${proc_status[i]}" ] || continue
            kill -0 "${proc_pids[i]}" 2>/dev/null && continue
            wait "${proc_pids[i]}"
            status=$?
            proc_status[i]=$status
            left=$((left - 1))
            if [ "$status" -ne 0 ]; then
                echo "error: ${proc_labels[i]} failed (python exit code $status); see ${proc_logs[i]}" >&2
                if [ "$left" -gt 0 ]; then
                    echo "Stopping the other training processes ($left still running)" >&2
                    proc_stop TERM
                fi
                proc_tail "$i"
                exit "$status"
            fi
        done
    done
    trap - INT TERM HUP
}
