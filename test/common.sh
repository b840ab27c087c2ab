# Shared body of the ModelZoo launch scripts test/train_{full,performance}_{1p,8p}.sh.
#
# Sourced, not run. A launch script sets two variables and calls sesemi_main "$@":
#   CASE_KIND       acc: the accuracy run, the seed's setting (CIFAR-10, ConvNet-13, 2000
#                   labels, asl, the default 300 epochs); perf: the same for 3 epochs, speed
#                   from the epochs after the first. It ends the CaseName.
#   RANK_SIZE       1: one process on $ASCEND_DEVICE_ID; 8: data-parallel training on the 8
#                   devices of the rank table, one process each (--distribute=npu, HCCL)
#
# Environment: ASCEND_DEVICE_ID (1p, default 0), RANK_TABLE_FILE (8p, default
# configs/rank_table_8p.json), PYTHON (default: the repo's .venv/bin/python if present, else
# python3), OUTPUT_ROOT (default: test/output next to this file), STOP_GRACE_SECONDS (see
# processes.sh).

NETWORK=SESEMI_ID1270_for_TensorFlow
TEST_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(dirname "$TEST_DIR")"
ENTRY="$ROOT_DIR/train_evaluate_asl2.py"
SCRIPT_NAME="$(basename "${BASH_SOURCE[1]}")"
# Flags of train_evaluate_asl2.py for the run; each one is dropped when the caller passes the
# same flag, so the caller's value wins.
DEFAULT_FLAGS=(--data=cifar10 --network=convnet --labels=2000 --mode=asl)
[ "$CASE_KIND" = acc ] || DEFAULT_FLAGS+=(--epochs=3)
# The flags that make the ranks of a many-device script one data-parallel job.
DISTRIBUTED_FLAGS=(--distribute=npu --device=npu)
. "$TEST_DIR/processes.sh"

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
                             (e.g. --epochs=1 --max_steps=20); listed in docs/training.md
    -h/--help                show help message
EOF
    if [ "$RANK_SIZE" -eq 1 ]; then
        cat <<EOF

A second run with the same output folder continues the first from its checkpoints
(--resume is added when test/output/\$ASCEND_DEVICE_ID/result holds some).

environment:
    ASCEND_DEVICE_ID         device to train on, default 0
EOF
    else
        cat <<EOF

Trains on the $RANK_SIZE devices of the rank table as one data-parallel job: one process per
device, with RANK_ID, RANK_SIZE=$RANK_SIZE, ASCEND_DEVICE_ID (the table's device of that rank) and
${DISTRIBUTED_FLAGS[*]}. --batch_size stays the global batch of a step.
Each device writes test/output/<device>/train_<device>.log and its result folder; the case log,
with the sum of the devices' images/s as ActualFPS, goes to rank 0's folder. A second run
continues from the checkpoints (--resume is added when rank 0's result folder holds some).

environment:
    RANK_TABLE_FILE          rank table json of this server (hccl_tools.py writes one),
                             default configs/rank_table_${RANK_SIZE}p.json
EOF
    fi
    cat <<EOF
    PYTHON                   interpreter, default the repo's .venv/bin/python if present, else python3
    OUTPUT_ROOT              output root, default test/output
EOF
    [ "$RANK_SIZE" -eq 1 ] || cat <<EOF
    STOP_GRACE_SECONDS       seconds between SIGTERM and SIGKILL when stopping the other devices'
                             processes after one failed, default 30
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

# Prints "fps ms_per_step loss accuracy batch_size" read from the JSON files of the result
# folders, rank 0's first. Speed of a folder: mean over the epochs after the first (which
# includes graph building), or the only epoch. fps: the sum over the folders, each counting
# the images its own device trained on; ms_per_step: their mean. Loss, accuracy (1 - error_dense
# of result.json) and the batch size (of args.json): rank 0's.
sesemi_read_figures() {  # result_folder...
    "$PYTHON" - "$@" <<'EOF'
import json, os, sys

def load(folder, name):
    with open(os.path.join(folder, name)) as f:
        return json.load(f)

fps, ms = [], []
for folder in sys.argv[1:]:
    with open(os.path.join(folder, 'metrics.jsonl')) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    timed = rows[1:] if len(rows) > 1 else rows
    fps.append(sum(r['images_per_sec'] for r in timed) / len(timed))
    ms.append(sum(r['ms_per_step'] for r in timed) / len(timed))
    if len(fps) == 1:
        loss = rows[-1]['loss']
        accuracy = 1.0 - load(folder, 'result.json')['error_dense']
        batch_size = 16
        if os.path.exists(os.path.join(folder, 'args.json')):
            batch_size = load(folder, 'args.json').get('batch_size', batch_size)
print('%.2f %.2f %.4f %.4f %d' % (sum(fps), sum(ms) / len(ms), loss, accuracy, batch_size))
EOF
}

# Prints "rank device" for ranks 0..RANK_SIZE-1 from a rank table (format 1.0: server_list,
# each server's device list of device_id, device_ip, rank_id); a missing, unreadable or invalid
# table: one line on stderr, exit code 2.
sesemi_read_rank_table() {  # path rank_size
    "$PYTHON" - "$1" "$2" <<'EOF'
import json, sys
path, size = sys.argv[1], int(sys.argv[2])

def fail(why):
    print('error: rank table %s %s' % (path, why), file=sys.stderr)
    sys.exit(2)

def number(value):
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return value if type(value) is int and value >= 0 else None

try:
    with open(path) as f:
        table = json.load(f)
except FileNotFoundError:
    fail('does not exist; set RANK_TABLE_FILE to the rank table json of this server')
except (OSError, UnicodeDecodeError) as err:
    fail('cannot be read: %s' % (getattr(err, 'strerror', None) or err))
except (ValueError, RecursionError) as err:
    fail('is not valid JSON: %s' % (' '.join(str(err).split()) or type(err).__name__))
servers = table.get('server_list') if isinstance(table, dict) else None
if not isinstance(servers, list) or not servers:
    fail('has no server_list (rank table format 1.0 expected)')
devices = {}
for server in servers:
    entries = server.get('device') if isinstance(server, dict) else None
    if not isinstance(entries, list):
        fail('has a server_list entry without a device list')
    for entry in entries:
        rank, device = (number(entry.get(k)) if isinstance(entry, dict) else None
                        for k in ('rank_id', 'device_id'))
        if rank is None or device is None:
            fail('has a device entry without a numeric rank_id and device_id: %s' % json.dumps(entry))
        if rank in devices:
            fail('gives rank_id %d twice' % rank)
        devices[rank] = device
if sorted(devices) != list(range(size)):
    fail('lists ranks %s; this script trains ranks 0 to %d' % (sorted(devices), size - 1))
if len(set(devices.values())) != size:
    fail('gives the same device_id to several ranks')
for rank in range(size):
    print(rank, devices[rank])
EOF
}

# Sets `cmd` to the python command of the device whose output folder is $1.
sesemi_rank_command() {  # output_folder
    local out="$1" dataset="$data_path" flag name
    [ -d "$data_path/cifar-10-batches-py" ] && dataset="$data_path/cifar-10-batches-py"
    cmd=("$PYTHON" "$ENTRY")
    sesemi_caller_gave dataset || cmd+=("--dataset=$dataset")
    for flag in "${DEFAULT_FLAGS[@]}" "--result=$out/result"; do
        name="${flag%%=*}"
        sesemi_caller_gave "${name#--}" || cmd+=("$flag")
    done
    [ "$RANK_SIZE" -eq 1 ] || cmd+=("${DISTRIBUTED_FLAGS[@]}")
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
    cmd+=("${extra_args[@]}" "${resume_flag[@]}")
}

# Sets `devices` to the device of each rank: $ASCEND_DEVICE_ID for one, the rank table's for many.
sesemi_devices() {
    if [ "$RANK_SIZE" -eq 1 ]; then
        export ASCEND_DEVICE_ID="${ASCEND_DEVICE_ID:-0}"
        case "$ASCEND_DEVICE_ID" in
            ''|*[!0-9]*) echo "error: ASCEND_DEVICE_ID must be a device number, got '$ASCEND_DEVICE_ID'" >&2; exit 2 ;;
        esac
        devices=("$ASCEND_DEVICE_ID")
        return
    fi
    local name table rank device
    # Every rank writes to its own device's folder, and the job's distribution is this script's.
    for name in result ckpt_path distribute device; do
        sesemi_caller_gave "$name" && sesemi_fail_usage \
            "--$name cannot be given to $SCRIPT_NAME (it sets it for every device; see -h)"
    done
    export RANK_TABLE_FILE="${RANK_TABLE_FILE:-$ROOT_DIR/configs/rank_table_${RANK_SIZE}p.json}"
    table="$(sesemi_read_rank_table "$RANK_TABLE_FILE" "$RANK_SIZE")" || exit 2
    devices=()
    while read -r rank device; do devices[rank]="$device"; done <<< "$table"
}

# Checks that every device's training left a result.json of this run; else exits non-zero.
sesemi_check_results() {
    local rank out result
    for rank in "${!devices[@]}"; do
        out="$OUTPUT_ROOT/${devices[rank]}"
        result="$(sesemi_caller_value result "$out/result")"
        if [ ! "$result/result.json" -nt "$out/.started" ]; then
            echo "error: training wrote no $result/result.json; see ${proc_logs[rank]}" >&2
            proc_tail "$rank"
            exit 1
        fi
        rm -f "$out/.started"
        results+=("$result")
    done
}

sesemi_main() {
    sesemi_parse_args "$@"
    OUTPUT_ROOT="${OUTPUT_ROOT:-$TEST_DIR/output}"
    PYTHON="$(proc_pick_python)"
    sesemi_devices
    export RANK_SIZE
    . "$TEST_DIR/malloc.sh"

    local rank out train_log
    for rank in "${!devices[@]}"; do
        out="$OUTPUT_ROOT/${devices[rank]}"
        mkdir -p "$out" || { echo "error: cannot create output folder $out" >&2; exit 1; }
        rm -f "$out"/train_*.log "$out/$NETWORK"_*.log  # logs of an earlier run; its results stay
    done
    # A job restarted after preemption continues where its checkpoints left off
    # (train_evaluate_asl2.py refuses, listing the differences, if the flags changed).
    local result0
    result0="$(sesemi_caller_value result "$OUTPUT_ROOT/${devices[0]}/result")"
    resume_flag=()
    if [ -f "$result0/checkpoints/checkpoint" ] && ! sesemi_caller_gave resume \
            && ! sesemi_caller_gave ckpt_path; then
        echo "Resuming the earlier run in $result0 (remove that folder to start over)"
        resume_flag=(--resume)
    fi

    local start end label
    start=$(date +%s)
    for rank in "${!devices[@]}"; do
        out="$OUTPUT_ROOT/${devices[rank]}"
        train_log="$out/train_${devices[rank]}.log"
        sesemi_rank_command "$out"
        { printf 'Command:'; printf ' %q' "${cmd[@]}"; printf '\n'; } > "$train_log"
        touch "$out/.started"  # a result.json older than this is from an earlier run
        echo "Training on device ${devices[rank]} (rank $rank of $RANK_SIZE); log: $train_log"
        label=training
        [ "$RANK_SIZE" -eq 1 ] || label="training on device ${devices[rank]} (rank $rank)"
        proc_start "$label" "$train_log" \
            env ASCEND_DEVICE_ID="${devices[rank]}" RANK_ID="$rank" "${cmd[@]}"
    done
    proc_wait_all
    end=$(date +%s)

    local results=() figures fps ms loss accuracy batch_size
    sesemi_check_results
    out="$OUTPUT_ROOT/${devices[0]}"
    if ! figures="$(sesemi_read_figures "${results[@]}" 2>>"${proc_logs[0]}")"; then
        echo "error: cannot read the figures from the metrics.jsonl and result.json of" \
             "${results[*]}; see ${proc_logs[0]}" >&2
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
