# Shared body of the ModelZoo launch scripts train_full_1p.sh and train_performance_1p.sh.
#
# Sourced, not run. A launch script sets three variables and calls sesemi_main "$@":
#   CASE_KIND       acc (accuracy run) or perf (performance run); ends the CaseName
#   SCRIPT_NAME     its own file name, for the usage text
#   DEFAULT_FLAGS   array of --name=value flags for train_evaluate_asl2.py; each one is
#                   dropped when the caller passes the same flag, so the caller's value wins
#
# Environment: ASCEND_DEVICE_ID (default 0), PYTHON (default: the repo's .venv/bin/python
# if present, else python3), OUTPUT_ROOT (default: test/output next to this file).

NETWORK=SESEMI_ID1270_for_TensorFlow
TEST_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(dirname "$TEST_DIR")"
ENTRY="$ROOT_DIR/train_evaluate_asl2.py"

sesemi_usage() {
    cat <<EOF
usage: bash $SCRIPT_NAME --data_path=FOLDER [options] [--flag=value ...]

parameter explain:
    --data_path              source data of training (required): the CIFAR-10 folder
                             cifar-10-batches-py, or the folder that contains it
    --precision_mode         precision mode(allow_fp32_to_fp16/force_fp16/must_keep_origin_dtype/allow_mix_precision)
    --over_dump              if or not over detection, default is False
                             (dumps go to test/output/\$ASCEND_DEVICE_ID/overflow_dump)
    --data_dump_flag         data dump flag, default is False
                             (dumps go to test/output/\$ASCEND_DEVICE_ID/data_dump)
    --data_dump_step         data dump step, e.g. 0|5|10 (default: train_evaluate_asl2.py's)
    --profiling              if or not profiling for performance debug, default is False
                             (profiles go to test/output/\$ASCEND_DEVICE_ID/profiling)
    --<flag>=<value>         any other flag of train_evaluate_asl2.py, passed on unchanged
                             (e.g. --epochs=1 --max_steps=20); listed in README.md
    -h/--help                show help message

A second run with the same output folder continues the first from its checkpoints
(--resume is added when test/output/$ASCEND_DEVICE_ID/result holds some).

environment:
    ASCEND_DEVICE_ID         device to train on, default 0
    PYTHON                   interpreter, default the repo's .venv/bin/python if present, else python3
    OUTPUT_ROOT              output root, default test/output
EOF
}

sesemi_fail_usage() {  # message
    echo "error: $1" >&2
    sesemi_usage >&2
    exit 2
}

# Splits the command line into the launch flags and the flags forwarded to python.
sesemi_parse_args() {
    data_path='' precision_mode='' over_dump='' data_dump_flag='' data_dump_step='' profiling=''
    given_npu=()
    extra_args=()
    local arg name value
    for arg in "$@"; do
        case "$arg" in
            -h|--help) sesemi_usage; exit 0 ;;
            --data_path=*|--precision_mode=*|--over_dump=*|--data_dump_flag=*|--data_dump_step=*|--profiling=*)
                name="${arg%%=*}"; name="${name#--}"; value="${arg#*=}"
                [ -n "$value" ] || sesemi_fail_usage "--$name needs a value (--$name=VALUE)"
                printf -v "$name" '%s' "$value"
                [ "$name" = data_path ] || [[ " ${given_npu[*]} " == *" $name "* ]] \
                    || given_npu+=("$name") ;;
            --data_path|--precision_mode|--over_dump|--data_dump_flag|--data_dump_step|--profiling)
                sesemi_fail_usage "$arg needs a value ($arg=VALUE)" ;;
            --?*) extra_args+=("$arg") ;;
            *) sesemi_fail_usage "unexpected argument '$arg'; flags take the form --name=value" ;;
        esac
    done
    [ -n "$data_path" ] || sesemi_fail_usage "--data_path is required (the CIFAR-10 folder or its parent)"
}

# True when the caller passed --NAME (as --NAME=value, --NAME or --noNAME) among the forwarded flags.
sesemi_caller_gave() {  # name
    local arg
    for arg in "${extra_args[@]}"; do
        case "$arg" in
            "--$1"|"--$1="*|"--no$1") return 0 ;;
        esac
    done
    return 1
}

# The value of the last --NAME=value among the forwarded flags, else $2.
sesemi_caller_value() {  # name default
    local arg value="$2"
    for arg in "${extra_args[@]}"; do
        case "$arg" in "--$1="*) value="${arg#*=}" ;; esac
    done
    printf '%s' "$value"
}

sesemi_is_true() {  # value, parsed like absl booleans
    case "$(printf '%s' "$1" | tr '[:upper:]' '[:lower:]')" in true|t|1) return 0 ;; esac
    return 1
}

sesemi_pick_python() {
    if [ -n "${PYTHON:-}" ]; then
        printf '%s' "$PYTHON"
    elif [ -x "$ROOT_DIR/.venv/bin/python" ]; then
        printf '%s' "$ROOT_DIR/.venv/bin/python"
    else
        printf '%s' python3
    fi
}

# Prints "fps ms_per_step loss accuracy batch_size" read from the run's JSON files.
# Speed: mean over the epochs after the first (which includes graph building), or
# the only epoch. Accuracy: 1 - error_dense of result.json.
sesemi_read_figures() {  # result_folder
    "$PYTHON" - "$1" <<'EOF'
import json, os, sys
folder = sys.argv[1]
with open(os.path.join(folder, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f if line.strip()]
with open(os.path.join(folder, 'result.json')) as f:
    result = json.load(f)
batch_size = 16
if os.path.exists(os.path.join(folder, 'args.json')):
    with open(os.path.join(folder, 'args.json')) as f:
        batch_size = json.load(f).get('batch_size', batch_size)
timed = rows[1:] if len(rows) > 1 else rows
mean = lambda key: sum(r[key] for r in timed) / len(timed)
print('%.2f %.2f %.4f %.4f %d' % (mean('images_per_sec'), mean('ms_per_step'), rows[-1]['loss'],
                                  1.0 - result['error_dense'], batch_size))
EOF
}

# One training run on one device; writes the train log and the case log.
sesemi_train_rank() {
    local out="$OUTPUT_ROOT/$ASCEND_DEVICE_ID"
    local train_log="$out/train_$ASCEND_DEVICE_ID.log"
    local result dataset flag
    mkdir -p "$out" || { echo "error: cannot create output folder $out" >&2; exit 1; }
    rm -f "$out"/train_*.log "$out/$NETWORK"_*.log  # logs of an earlier run; its results stay
    result="$(sesemi_caller_value result "$out/result")"

    dataset="$data_path"
    [ -d "$data_path/cifar-10-batches-py" ] && dataset="$data_path/cifar-10-batches-py"
    local cmd=("$PYTHON" "$ENTRY")
    sesemi_caller_gave dataset || cmd+=("--dataset=$dataset")
    for flag in "${DEFAULT_FLAGS[@]}" "--result=$out/result"; do
        local name="${flag%%=*}"
        sesemi_caller_gave "${name#--}" || cmd+=("$flag")
    done
    # NPU flags: forwarded only when given, so that their defaults stay in python.
    for flag in "${given_npu[@]}"; do
        cmd+=("--$flag=${!flag}")
        case "$flag" in
            over_dump) cmd+=("--over_dump_path=$out/overflow_dump")
                       sesemi_is_true "$over_dump" && mkdir -p "$out/overflow_dump" ;;
            data_dump_flag) cmd+=("--data_dump_path=$out/data_dump")
                            sesemi_is_true "$data_dump_flag" && mkdir -p "$out/data_dump" ;;
            profiling) cmd+=("--profiling_path=$out/profiling")
                       sesemi_is_true "$profiling" && mkdir -p "$out/profiling" ;;
        esac
    done
    cmd+=("${extra_args[@]}")
    # A job restarted after preemption continues where its checkpoints left off
    # (train_evaluate_asl2.py refuses, listing the differences, if the flags changed).
    if [ -f "$result/checkpoints/checkpoint" ] && ! sesemi_caller_gave resume \
            && ! sesemi_caller_gave ckpt_path; then
        echo "Resuming the earlier run in $result (remove that folder to start over)"
        cmd+=(--resume)
    fi

    echo "Training on device $ASCEND_DEVICE_ID (rank $RANK_ID of $RANK_SIZE); log: $train_log"
    {
        printf 'Command:'; printf ' %q' "${cmd[@]}"; printf '\n'
    } > "$train_log"
    local start end status
    touch "$out/.started"  # a result.json older than this is from an earlier run
    start=$(date +%s)
    "${cmd[@]}" >> "$train_log" 2>&1
    status=$?
    end=$(date +%s)

    if [ "$status" -ne 0 ] || [ ! "$result/result.json" -nt "$out/.started" ]; then
        if [ "$status" -ne 0 ]; then
            echo "error: training failed (python exit code $status); see $train_log" >&2
        else
            echo "error: training wrote no $result/result.json; see $train_log" >&2
            status=1
        fi
        echo "---- last lines of $train_log ----" >&2
        tail -n 15 "$train_log" >&2
        exit "$status"
    fi
    rm -f "$out/.started"

    local figures fps ms loss accuracy batch_size
    if ! figures="$(sesemi_read_figures "$result" 2>>"$train_log")"; then
        echo "error: cannot read the figures from $result/metrics.jsonl and result.json; see $train_log" >&2
        exit 1
    fi
    read -r fps ms loss accuracy batch_size <<< "$figures"
    local case_name="${NETWORK}_bs${batch_size}_${RANK_SIZE}p_${CASE_KIND}"
    local case_log="$out/${case_name}.log"
    {
        echo "Network = ${NETWORK}"
        echo "RankSize = ${RANK_SIZE}"
        echo "BatchSize = ${batch_size}"
        echo "DeviceType = $(uname -m)"
        echo "CaseName = ${case_name}"
        echo "ActualFPS = ${fps}"
        echo "TrainingTime = ${ms}"
        echo "ActualLoss = ${loss}"
        echo "TrainAccuracy = ${accuracy}"
        echo "E2ETrainingTime = $((end - start))"
    } > "$case_log"
    echo "------------------ Final result ------------------"
    cat "$case_log"
    echo "Case log: $case_log"
}

sesemi_main() {
    sesemi_parse_args "$@"
    export ASCEND_DEVICE_ID="${ASCEND_DEVICE_ID:-0}"
    case "$ASCEND_DEVICE_ID" in
        ''|*[!0-9]*) echo "error: ASCEND_DEVICE_ID must be a device number, got '$ASCEND_DEVICE_ID'" >&2; exit 2 ;;
    esac
    export RANK_SIZE=1
    OUTPUT_ROOT="${OUTPUT_ROOT:-$TEST_DIR/output}"
    PYTHON="$(sesemi_pick_python)"
    . "$TEST_DIR/malloc.sh"
    for ((RANK_ID = 0; RANK_ID < RANK_SIZE; RANK_ID++)); do
        export RANK_ID
        sesemi_train_rank
    done
}
