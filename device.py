"""Where training runs (CPU, GPU or Ascend NPU), in which precision, and the
device's debugging aids: overflow detection, data dump and profiling.

The flags are those of the Ascend ModelZoo launch scripts. On an NPU they become
options of the CANN TensorFlow adapter (``npu_bridge`` session options on TF 1.15,
``npu_device.global_options()`` on TF 2.x), and the adapter does the work. On
CPU and GPU, TensorFlow's own tools do the same jobs:

    flag                 NPU (adapter option)       CPU / GPU
    --precision_mode     precision_mode             mixed precision or float32
    --over_dump          enable_dump_debug          stop at the first Inf/NaN, report its op
    --data_dump_flag     enable_dump, dump_step     tfdbg dump of the chosen steps
    --profiling          profiling_mode             TensorFlow profiler trace

The entry calls, in order: ``define_flags`` and ``check_flags`` (before TensorFlow
loads, so bad input costs one line on stderr), ``configure`` (before the model is
built), ``optimizer_wrapper`` (when it is compiled), ``callbacks`` (for fit) and,
for --dry_run, ``describe``. This module is the only place that knows how
TF 1.15, TF 2.x and the three devices differ in these matters.
"""

import importlib
import importlib.util
import json
import os
import re
import sys
from typing import Callable, Dict, List, Optional, Tuple

from absl import flags

from utils import UsageError

DEVICES = ('auto', 'cpu', 'gpu', 'npu')
PRECISION_MODES = (
    'allow_fp32_to_fp16',
    'force_fp16',
    'force_fp32',
    'cube_fp16in_fp32out',
    'must_keep_origin_dtype',
    'allow_mix_precision',
)
NPU_DEFAULT_PRECISION = 'allow_fp32_to_fp16'  # the Ascend 910 default
# Modes that let the device compute in 16 bits: mixed precision on CPU/GPU.
MIXED_MODES = ('allow_mix_precision', 'allow_fp32_to_fp16', 'force_fp16')
DEFAULT_DUMP_STEP = '10'  # the ModelZoo page's default
# The CANN adapter's module per TensorFlow generation (TF 1.15: the session-config
# bridge, whose npu_init registers the NpuOptimizer graph pass; TF 2.x: the device).
ADAPTER = {1: 'npu_bridge.npu_init', 2: 'npu_device'}
# Dynamic loss scale of the ModelZoo scripts' NPU mixed-precision training.
NPU_LOSS_SCALE = {
    'init_loss_scale': 2**32,
    'incr_every_n_steps': 1000,
    'decr_every_n_nan_or_inf': 2,
    'decr_ratio': 0.5,
}
OVERFLOW_EXIT_CODE = 3  # as the entry's own stop on a non-finite loss
OVERFLOW_REPORT = 'overflow_report.txt'
REPORT_TENSORS = 50  # non-finite tensors listed in the TF 1.15 overflow report
PROFILE_SKIP_STEPS = 1  # the first step of a run builds graphs and kernels: not representative
PROFILE_STEPS = 3


# ------------------------------------------------------------------ flags


def define_flags(fv: flags.FlagValues) -> None:
    """Defines the device flags (those of the ModelZoo launch scripts) on ``fv``."""
    flags.DEFINE_enum(
        'device',
        'auto',
        DEVICES,
        'Where to train. auto (default): npu when the '
        'Ascend adapter imports (npu_bridge on TF 1.15, npu_device on TF 2), else gpu '
        'when one is visible, else cpu.',
        flag_values=fv,
    )
    flags.DEFINE_string(
        'precision_mode',
        '',
        "Ascend precision mode: %s. Default '': the "
        "device's own (%s on npu, float32 on cpu/gpu). On cpu/gpu, %s train in "
        'mixed precision (bfloat16 on CPU and float16 on GPU under TF 2; float16 '
        'on GPU only under TF 1.15), the others in float32.'
        % (', '.join(PRECISION_MODES), NPU_DEFAULT_PRECISION, '/'.join(MIXED_MODES)),
        flag_values=fv,
    )
    flags.DEFINE_boolean(
        'over_dump',
        False,
        'Overflow detection: stop at the first Inf/NaN and '
        'report the op that made it (default off).',
        flag_values=fv,
    )
    flags.DEFINE_string(
        'over_dump_path',
        None,
        'Folder of the overflow report and dumps; default <result>/overflow_dump.',
        flag_values=fv,
    )
    flags.DEFINE_boolean(
        'data_dump_flag',
        False,
        'Dump every tensor of the steps in --data_dump_step (default off).',
        flag_values=fv,
    )
    flags.DEFINE_string(
        'data_dump_path',
        None,
        'Folder of the data dump (one sub-folder per step on cpu/gpu); default <result>/data_dump.',
        flag_values=fv,
    )
    flags.DEFINE_string(
        'data_dump_step',
        DEFAULT_DUMP_STEP,
        'Training steps to dump, counted '
        'from 0: numbers and a-b ranges joined by |, e.g. 0|3-5|10 (default %s).'
        % DEFAULT_DUMP_STEP,
        flag_values=fv,
    )
    flags.DEFINE_boolean(
        'profiling',
        False,
        'Record a profiler trace (on cpu/gpu: %d steps after '
        'the first %d; default off).' % (PROFILE_STEPS, PROFILE_SKIP_STEPS),
        flag_values=fv,
    )
    flags.DEFINE_string(
        'profiling_path',
        None,
        'Folder of the profiling data; default <result>/profiling.',
        flag_values=fv,
    )


def parse_dump_steps(text: str) -> List[int]:
    """The steps of a --data_dump_step value such as ``0|3-5|10``, sorted.

    Raises:
        UsageError: malformed text or a decreasing range.
    """
    steps = set()
    for part in text.split('|'):
        match = re.match(r'^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$', part)
        if not match or (match.group(2) and int(match.group(2)) < int(match.group(1))):
            raise UsageError(
                '--data_dump_step=%r is malformed; give steps counted from 0, joined '
                'by |, with a-b for ranges (e.g. 0|3-5|10)' % text
            )
        first = int(match.group(1))
        steps.update(range(first, int(match.group(2) or first) + 1))
    return sorted(steps)


def _check_folder(path: str, flag: str, create: bool) -> None:
    """Makes sure folder ``path`` exists and is writable (``create``), or could be."""
    if create:
        try:
            os.makedirs(path, exist_ok=True)
            if not os.access(path, os.W_OK):
                raise PermissionError(13, 'not writable')
            return
        except OSError as err:
            reason = err.strerror or str(err)
    else:  # --dry_run writes nothing: only check that the nearest existing parent allows it
        parent = os.path.abspath(path)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if os.path.isdir(parent) and os.access(parent, os.W_OK):
            return
        reason = '%s is not a writable folder' % parent
    raise UsageError('cannot create --%s=%s (%s); pass a writable folder' % (flag, path, reason))


def check_flags(cfg: dict) -> None:
    """Validates the device flags and resolves the default dump/profiling folders
    into ``cfg``. Imports no TensorFlow.

    Raises:
        UsageError: unknown precision mode, both dumps on, a malformed
            --data_dump_step, a folder that cannot be created, or --device=npu
            without an Ascend adapter (a --dry_run only reports the latter).
    """
    if cfg['precision_mode'] and cfg['precision_mode'] not in PRECISION_MODES:
        raise UsageError(
            'unknown --precision_mode=%s; choose one of: %s (or leave it empty for '
            'the device default)' % (cfg['precision_mode'], ', '.join(PRECISION_MODES))
        )
    if cfg['over_dump'] and cfg['data_dump_flag']:
        raise UsageError(
            '--over_dump and --data_dump_flag cannot both be on (the Ascend adapter '
            'refuses enable_dump with enable_dump_debug); run them one at a time'
        )
    parse_dump_steps(cfg['data_dump_step'])
    for switch, key, default in (
        ('over_dump', 'over_dump_path', 'overflow_dump'),
        ('data_dump_flag', 'data_dump_path', 'data_dump'),
        ('profiling', 'profiling_path', 'profiling'),
    ):
        cfg[key] = cfg[key] or os.path.join(cfg['result'], default)
        if cfg[switch]:
            _check_folder(cfg[key], key, create=not cfg['dry_run'])
    # importlib.util.find_spec locates a top-level package without running it (the
    # adapters import TensorFlow), so a missing adapter is reported before TF loads.
    if (
        cfg['device'] == 'npu'
        and not cfg['dry_run']
        and not any(importlib.util.find_spec(name.split('.')[0]) for name in ADAPTER.values())
    ):
        raise UsageError(_missing_adapter_text())


def _missing_adapter_text(detail: str = '') -> str:
    return (
        '--device=npu needs the Ascend CANN TensorFlow adapter (npu_bridge for TF 1.15, '
        'npu_device for TF 2), which does not import here%s; install CANN and its adapter, or '
        'use --device=cpu/gpu/auto' % (' (%s)' % detail if detail else '')
    )


# ------------------------------------------------------ device and precision


def _tf_generation() -> int:
    from compat import TF1

    return 1 if TF1 else 2


def import_adapter() -> Tuple[Optional[object], str]:
    """Imports the Ascend adapter of the running TensorFlow generation.

    Returns:
        (module, '') or (None, why it does not import).
    """
    name = ADAPTER[_tf_generation()]
    try:
        return importlib.import_module(name), ''
    except Exception as err:  # a broken install fails in many ways (missing CANN libraries, ...)
        first_line = str(err).splitlines()[0] if str(err) else ''
        return None, '%s: %s: %s' % (name, type(err).__name__, first_line)


def resolve_precision(device: str, precision_mode: str, tf1: bool) -> str:
    """The precision actually used: an NPU precision mode, or a Keras dtype policy.

    On CPU/GPU the modes that allow 16-bit compute become mixed precision:
    bfloat16 on CPU (no loss scaling needed), float16 on GPU (with loss
    scaling). TF 1.15 has only the GPU float16 graph rewrite, so its CPU runs
    stay in float32.
    """
    if device == 'npu':
        return precision_mode or NPU_DEFAULT_PRECISION
    if precision_mode not in MIXED_MODES:
        return 'float32'
    if device == 'gpu':
        return 'mixed_float16'
    return 'float32' if tf1 else 'mixed_bfloat16'


def bfloat16_is_native() -> bool:
    """Whether oneDNN computes bfloat16 with this CPU's own instructions (AVX-512
    BF16, AMX, or their ARM counterparts), as TensorFlow itself decides it; False
    where TensorFlow cannot tell (it then emulates bfloat16 slowly)."""
    from compat import tf

    try:
        from tensorflow.python.util import _pywrap_utils

        return bool(
            _pywrap_utils.IsDataTypeSupportedByOneDNNOnThisCPU(tf.bfloat16.as_datatype_enum)
        )
    except (ImportError, AttributeError):
        return False


def _select_device(cfg: dict) -> Tuple[str, Optional[object]]:
    """Resolves --device; returns (device, adapter module or None)."""
    from compat import tf

    if cfg['device'] in ('auto', 'npu'):
        adapter, why = import_adapter()
        if adapter is not None:
            return 'npu', adapter
        if cfg['device'] == 'npu':
            if cfg['dry_run']:
                return 'npu', None
            raise UsageError(_missing_adapter_text(why))
    gpus = tf.config.experimental.list_physical_devices('GPU')
    if cfg['device'] == 'gpu' and not gpus:
        raise UsageError(
            '--device=gpu but TensorFlow sees no GPU (CUDA_VISIBLE_DEVICES=%s); use '
            '--device=cpu or auto' % os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')
        )
    return ('gpu' if gpus else 'cpu') if cfg['device'] == 'auto' else cfg['device'], None


def configure(cfg: dict) -> Dict[str, str]:
    """Sets up the device before the model is built.

    NPU: the adapter's session (TF 1.15) or device options (TF 2). CPU/GPU: the
    Keras mixed-precision policy (TF 2), the float16 graph rewrite (TF 1.15 GPU),
    and TF 2's numeric checking for --over_dump.

    Returns:
        What to record in args.json: {'device': cpu|gpu|npu, 'precision': the
        policy in effect (float32, mixed_bfloat16, mixed_float16) or the NPU's
        precision mode}.

    Raises:
        UsageError: --device=npu without the adapter (except in a --dry_run),
            --device=gpu without a GPU.
    """
    from compat import TF1, keras, tf

    device, adapter = _select_device(cfg)
    precision = resolve_precision(device, cfg['precision_mode'], TF1)
    if device == 'npu':
        if adapter is not None and TF1:
            _set_tf1_session(npu_session_config(dict(cfg, precision=precision)))
        elif adapter is not None:
            open_npu(adapter, npu_options(dict(cfg, precision=precision)))
        return {'device': device, 'precision': precision}
    if precision != 'float32' and TF1:  # TF 1.15 GPU: sessions made from now on rewrite to float16
        config = tf.compat.v1.ConfigProto()
        config.graph_options.rewrite_options.auto_mixed_precision = _rewriter().ON
        _set_tf1_session(config, cfg['deterministic'])
    elif precision != 'float32':
        if precision == 'mixed_bfloat16' and not bfloat16_is_native():
            print(
                'warning: this CPU has no bfloat16 instructions that oneDNN uses, so mixed_bfloat16 '
                'is emulated and can be many times slower than float32; leave --precision_mode '
                'empty for float32',
                file=sys.stderr,
            )
        keras.mixed_precision.set_global_policy(precision)
    elif cfg['precision_mode'] in MIXED_MODES:
        print(
            'warning: --precision_mode=%s trains in float32 here: TensorFlow 1.15 has mixed '
            'precision on GPU only (the Keras mixed-precision policy needs TF 2)'
            % cfg['precision_mode'],
            file=sys.stderr,
        )
    if cfg['over_dump'] and not TF1:
        # Instruments every op created from now on, the training step included.
        tf.debugging.enable_check_numerics()
    return {'device': device, 'precision': precision}


def _rewriter():
    from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig

    return RewriterConfig


def _set_tf1_session(config, deterministic: bool = False) -> None:
    """Makes Keras (TF 1.15) use a new session with ``config``."""
    from compat import tf

    if deterministic:  # this session replaces the one of compat.make_deterministic
        config.intra_op_parallelism_threads = config.inter_op_parallelism_threads = 1
    tf.compat.v1.keras.backend.set_session(tf.compat.v1.Session(config=config))


def optimizer_wrapper(cfg: dict, all_reduce: Optional[Callable] = None) -> Optional[Callable]:
    """What to wrap the SGD optimizer in, for the precision in effect (after
    ``configure``); None when it is used as it is.

    TF 2 GPU float16 needs nothing: Keras' compile adds dynamic loss scaling
    under the mixed_float16 policy by itself; bfloat16 needs no loss scaling.
    A --dry_run compiles nothing that trains, and may lack the adapter.

    Args:
        cfg: the flags, with the device and precision in effect.
        all_reduce: on an NPU with several ranks, the adapter's gradient
            all-reduce around an optimizer (``distribute.DataParallel``). Under
            allow_mix_precision it goes inside the loss-scale optimizer, whose
            distributed option makes every rank skip an overflowing step together.
    """
    from compat import TF1

    if cfg['dry_run']:
        return None
    if cfg['device'] == 'npu' and cfg['precision'] == 'allow_mix_precision':
        scale = _npu_loss_scale_tf1 if TF1 else _npu_loss_scale_tf2
        return lambda optimizer: scale(optimizer, all_reduce)
    if all_reduce is not None:
        return all_reduce
    if cfg['device'] == 'gpu' and cfg['precision'] == 'mixed_float16' and TF1:
        from compat import tf

        # Wraps the optimizer in Keras' dynamic loss scaling and turns on the
        # float16 graph rewrite for sessions created later (configure made one
        # with the rewrite on already).
        return tf.compat.v1.train.experimental.enable_mixed_precision_graph_rewrite
    return None


def _npu_loss_scale_tf1(optimizer, all_reduce: Optional[Callable] = None):
    """The adapter's loss-scale optimizer around an equivalent TF 1.x optimizer.

    NPULossScaleOptimizer wraps ``tf.compat.v1.train.Optimizer``s only, so the
    Keras SGD is rebuilt as MomentumOptimizer (same momentum, Nesterov, and the
    same learning-rate schedule on Keras' step counter). On Ascend 910 an
    overflow saturates instead of giving Inf/NaN; the adapter's optimizer
    detects it and skips that step. With ``all_reduce`` (several ranks) the
    MomentumOptimizer is wrapped in it and the loss-scale optimizer is
    distributed: the ranks agree on the overflow status.
    """
    # TF 1.15 exports neither of these; they are what compile() itself does
    # with a TF optimizer, done here so that the schedule can read the counter.
    from npu_bridge.estimator.npu.npu_loss_scale_manager import ExponentialUpdateLossScaleManager
    from npu_bridge.estimator.npu.npu_loss_scale_optimizer import NPULossScaleOptimizer
    from tensorflow.python.keras.backend import track_tf_optimizer
    from tensorflow.python.keras.optimizers import TFOptimizer

    from compat import tf

    config = optimizer.get_config()
    schedule = optimizer.learning_rate
    keras_optimizer = []  # filled below; the learning rate is read at graph building
    momentum = tf.compat.v1.train.MomentumOptimizer(
        lambda: schedule(keras_optimizer[0].iterations),
        config['momentum'],
        use_nesterov=config['nesterov'],
    )
    manager = ExponentialUpdateLossScaleManager(**NPU_LOSS_SCALE)
    if all_reduce is None:
        scaled = NPULossScaleOptimizer(momentum, manager)
    else:
        scaled = NPULossScaleOptimizer(all_reduce(momentum), manager, is_distributed=True)
    keras_optimizer.append(TFOptimizer(scaled))
    track_tf_optimizer(keras_optimizer[0])  # so that Keras initialises its slot variables
    return keras_optimizer[0]


def _npu_loss_scale_tf2(optimizer, all_reduce: Optional[Callable] = None):
    """The adapter's Keras loss-scale optimizer (dynamic scale), which also sees
    the saturating overflows of Ascend 910, around the optimizer (with its
    gradient ``all_reduce`` when given; the adapter all-reduces the overflow
    status across ranks itself)."""
    import npu_device

    if all_reduce is not None:
        optimizer = all_reduce(optimizer)
    return npu_device.train.optimizer.NpuLossScaleOptimizer(optimizer, dynamic=True)


# ------------------------------------------------------------ NPU settings


def profiling_options(path: str) -> str:
    """The adapter's profiling_options JSON: training trace, task trace and AI CPU
    data, with the forward/backward boundary ops detected automatically."""
    return json.dumps(
        {
            'output': path,
            'training_trace': 'on',
            'task_trace': 'on',
            'aicpu': 'on',
            'fp_point': '',
            'bp_point': '',
            'aic_metrics': 'PipeUtilization',
        }
    )


def npu_settings(cfg: dict) -> List[Tuple[str, object]]:
    """The NPU options the flags ask for, as (name, value) pairs; dumps and
    profiling appear only when enabled (the adapter's defaults are off)."""
    settings = [
        ('precision_mode', cfg.get('precision') or cfg['precision_mode'] or NPU_DEFAULT_PRECISION)
    ]
    if cfg['data_dump_flag']:
        settings += [
            ('enable_dump', True),
            ('dump_path', cfg['data_dump_path']),
            ('dump_step', cfg['data_dump_step']),
            ('dump_mode', 'output'),
        ]
    if cfg['over_dump']:
        settings += [
            ('enable_dump_debug', True),
            ('dump_path', cfg['over_dump_path']),
            ('dump_debug_mode', 'all'),
        ]
    if cfg['profiling']:
        settings += [
            ('profiling_mode', True),
            ('profiling_options', profiling_options(cfg['profiling_path'])),
        ]
    return settings


def npu_session_config(cfg: dict):
    """The TF 1.15 session config that runs the graph on the NPU through the
    adapter's NpuOptimizer pass, with the flags' options in its parameter_map.

    Needs no adapter (the pass is looked up by name when the session starts).
    """
    from compat import tf

    config = tf.compat.v1.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    # The adapter's pass partitions the graph itself: TF's remapper (op fusion)
    # and memory optimizer would hand it ops the NPU does not know. OFF is the
    # value the adapter's documentation gives for both (in memory_optimization's
    # own enum it reads MANUAL: only user-requested swaps, none automatic).
    rewrite.remapping = _rewriter().OFF
    rewrite.memory_optimization = _rewriter().OFF
    npu = rewrite.custom_optimizers.add()
    npu.name = 'NpuOptimizer'
    params = npu.parameter_map
    params['use_off_line'].b = True  # train on the device, not on the host
    params['mix_compile_mode'].b = False  # the whole graph goes to the device
    for name, value in npu_settings(cfg):
        if isinstance(value, bool):
            params[name].b = value
        else:
            params[name].s = tf.compat.as_bytes(value)
    return config


# The TF 2 adapter's global_options() field of each setting.
_TF2_FIELDS = {
    'precision_mode': 'precision_mode',
    'enable_dump': 'dump_config.enable_dump',
    'dump_path': 'dump_config.dump_path',
    'dump_step': 'dump_config.dump_step',
    'dump_mode': 'dump_config.dump_mode',
    'enable_dump_debug': 'dump_config.enable_dump_debug',
    'dump_debug_mode': 'dump_config.dump_debug_mode',
    'profiling_mode': 'profiling_config.enable_profiling',
    'profiling_options': 'profiling_config.profiling_options',
}


def npu_options(cfg: dict) -> List[Tuple[str, object]]:
    """The TF 2 adapter's ``global_options()`` fields to set, as (dotted name, value)."""
    return [(_TF2_FIELDS[name], value) for name, value in npu_settings(cfg)]


def open_npu(npu, options: List[Tuple[str, object]]) -> None:
    """Sets ``options`` on ``npu.global_options()``, then opens the NPU as the
    default device (``npu`` is the ``npu_device`` module, or a stand-in)."""
    target = npu.global_options()
    for name, value in options:
        owner = target
        *groups, field = name.split('.')
        for group in groups:
            owner = getattr(owner, group)
        setattr(owner, field, value)
    npu.open().as_default()


# -------------------------------------------- debugging aids on CPU and GPU


def callbacks(cfg: dict) -> list:
    """The Keras callbacks of --over_dump, --data_dump_flag and --profiling on
    CPU/GPU (after ``configure``). On an NPU the adapter does these jobs itself,
    from the options ``configure`` gave it."""
    if cfg['device'] == 'npu':
        return []
    found = []
    if cfg['over_dump']:
        found.append(_overflow_check(cfg['over_dump_path']))
    if cfg['data_dump_flag']:
        found.append(_data_dump(cfg['data_dump_path'], parse_dump_steps(cfg['data_dump_step'])))
    if cfg['profiling']:
        found.append(_profiler(cfg['profiling_path']))
    return found


def _step(model) -> int:
    """The training step about to run (or just run): the optimizer's counter."""
    from compat import to_float

    return int(to_float(model.optimizer.iterations))


def _tf1_run_with(model, options=None, run_metadata=None, compiled=None):
    """Makes Keras' TF 1.15 training function run with ``options`` (RunOptions)
    from its next call on, filling ``run_metadata``.

    The function compiles its options into a cached session callable, which
    takes seconds to build for this model. Returns the callable in use until
    now; pass it back as ``compiled`` when going back to its options.
    """
    # pylint: disable=protected-access
    function = model.train_function
    previous = function._callable_fn
    function.run_options, function.run_metadata = options, run_metadata
    function._callable_fn = compiled  # None: rebuilt with ``options`` at the next call
    return previous


def _tf1_watch_everything(debug_op: str, folder: str, dtypes: Optional[str] = None):
    """RunOptions that make TF 1.15's debugger apply ``debug_op`` to every tensor
    (of the dtypes matching the regex ``dtypes``) and write into ``folder``."""
    from tensorflow.python import debug as tf_debug

    from compat import K, tf

    options = tf.compat.v1.RunOptions()
    tf_debug.watch_graph(
        options,
        K.get_session().graph,
        debug_ops=[debug_op],
        debug_urls=['file://' + os.path.abspath(folder)],
        tensor_dtype_regex_whitelist=dtypes,
    )
    return options


def _overflow_check(folder: str):
    """A callback that stops training at the first Inf/NaN and reports the op
    that produced it in ``folder``/overflow_report.txt."""
    import numpy as np

    from compat import TF1, K, keras, tf

    class OverflowCheck(keras.callbacks.Callback):
        step = 0

        def on_train_batch_begin(self, batch, logs=None):
            self.step = _step(self.model)

        def stop(self, op_name: str, op_type: str, details: str) -> None:
            """Writes the report, then ends the process like the entry's own
            stop on a non-finite loss: one line on stderr, exit code 3."""
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, OVERFLOW_REPORT)
            with open(path, 'w') as f:
                f.write(
                    'First Inf/NaN in training step %d\nop: %s\nop type: %s\n\n%s\n'
                    % (self.step, op_name, op_type, details)
                )
            sys.stdout.flush()
            print(
                'error: the first Inf/NaN came from op %s (%s) at step %d, see %s; lower '
                '--base_lr or check the input data' % (op_name, op_type, self.step, path),
                file=sys.stderr,
            )
            raise SystemExit(OVERFLOW_EXIT_CODE)

        def on_train_batch_end(self, batch, logs=None):
            # An optimizer update has no output tensor for the checks to see: an
            # update that makes a weight non-finite shows up here.
            weights = self.model.weights
            for weight, value in zip(weights, K.batch_get_value(weights)):
                if not np.all(np.isfinite(value)):
                    op_name, op_type = _update_op(weight, self.model.optimizer)
                    self.stop(
                        op_name,
                        op_type,
                        'Weight %s holds Inf/NaN after the update of this '
                        'step (no tensor computed in the step did).' % weight.name,
                    )

    class CheckNumerics(OverflowCheck):
        """TF 2: every op traced after ``configure`` carries a numeric check
        (tf.debugging.enable_check_numerics), which raises at the first op whose
        output holds an Inf or NaN; this turns that error into the report."""

        def on_train_begin(self, logs=None):
            train = self.model.train_function
            if getattr(train, 'overflow_checked', False):  # wrapped by an earlier fit
                return

            def checked(iterator):
                try:
                    return train(iterator)
                except tf.errors.InvalidArgumentError as err:
                    if 'Detected Infinity or NaN' not in err.message:
                        raise
                    node = re.search(r"node '?([^\s']+?)/CheckNumerics", err.message)
                    op_type = re.search(r'op "(\w+)"', err.message)
                    self.stop(
                        node.group(1) if node else 'unknown',
                        op_type.group(1) if op_type else 'unknown',
                        'Found by tf.debugging.enable_check_numerics(). TensorFlow says:\n'
                        + err.message,
                    )

            checked.overflow_checked = True
            self.model.train_function = checked

    class NumericSummaries(OverflowCheck):
        """TF 1.15: the debugger computes a numeric summary of every float tensor
        of every step and writes only those holding an Inf or NaN
        (mute_if_healthy), so a healthy step leaves nothing to read. The
        earliest summary written names the op. (tf.add_check_numerics_ops would
        be simpler, but refuses graphs with tf.cond, which Keras' dropout and
        batch norm build in TF 1.15.)"""

        def on_train_begin(self, logs=None):
            self.dumps = os.path.join(folder, 'tfdbg')
            self.usual = _tf1_run_with(
                self.model,
                _tf1_watch_everything(
                    'DebugNumericSummary(mute_if_healthy=true)', self.dumps, dtypes='.*float.*'
                ),
            )

        def on_train_batch_end(self, batch, logs=None):
            unhealthy = [
                name
                for _, _, names in os.walk(self.dumps)
                for name in names
                if '_DebugNumericSummary_' in name
            ]
            if not unhealthy:
                for name in os.listdir(self.dumps):  # one small metadata file per step
                    if name.startswith('_tfdbg_core_metadata_'):
                        os.remove(os.path.join(self.dumps, name))
                super().on_train_batch_end(batch, logs)
                return
            from tensorflow.python import debug as tf_debug

            dump = tf_debug.DebugDumpDir(self.dumps, validate=False)
            data = sorted(dump.dumped_tensor_data, key=lambda datum: datum.timestamp)
            lines = [
                'Found by the TF 1.15 debugger (DebugNumericSummary of every float tensor).',
                'Tensors holding Inf/NaN in this step, in the order they were computed:',
            ]
            for datum in data[:REPORT_TENSORS]:
                summary = (
                    datum.get_tensor()
                )  # [initialized, count, NaN, -Inf, <0, 0, >0, +Inf, ...]
                lines.append(
                    '  %s:%d (%s): %d NaN, %d -Inf, %d +Inf of %d elements'
                    % (
                        datum.node_name,
                        datum.output_slot,
                        dump.node_op_type(datum.node_name),
                        summary[2],
                        summary[3],
                        summary[7],
                        summary[1],
                    )
                )
            if len(data) > REPORT_TENSORS:
                lines.append('  ... and %d more' % (len(data) - REPORT_TENSORS))
            first = data[0].node_name
            self.stop(first, dump.node_op_type(first), '\n'.join(lines))

        def on_train_end(self, logs=None):
            _tf1_run_with(self.model, compiled=self.usual)

    return NumericSummaries() if TF1 else CheckNumerics()


def _update_op(weight, optimizer) -> Tuple[str, str]:
    """(name, type) of the op that updates ``weight``: found in the TF 1.15 graph;
    described in TF 2, whose training step is a traced function."""
    from compat import TF1

    if TF1:
        users = weight.op.outputs[0].consumers()
        for kind in ('Apply', 'AssignSub', 'AssignAdd'):  # optimizer, then moving averages
            for op in users:
                if kind in op.type:
                    return op.name, op.type
    return '%s update of %s' % (type(optimizer).__name__, weight.name), 'optimizer update'


def _data_dump(folder: str, steps: List[int]):
    """A callback that dumps every tensor of the training steps ``steps`` into
    ``folder``/step_<n>/, and nothing of the other steps."""
    from compat import TF1, keras, tf

    steps = set(steps)

    class DataDump(keras.callbacks.Callback):
        target = None  # the folder of the step being dumped
        usual = None  # the usual training function (TF 2), or its compiled callable (TF 1.15)

        def on_train_batch_begin(self, batch, logs=None):
            step = _step(self.model)
            if step not in steps:
                return
            self.target = os.path.join(folder, 'step_%d' % step)
            if TF1:  # TF 1.15's debugger: DebugIdentity copies each tensor to a file
                self.usual = _tf1_run_with(
                    self.model, _tf1_watch_everything('DebugIdentity', self.target)
                )
                return
            tf.debugging.experimental.enable_dump_debug_info(
                self.target, tensor_debug_mode='FULL_TENSOR', circular_buffer_size=-1
            )
            # TF 2's dumping instruments graphs as they are traced: a training
            # function traced now dumps, the usual one (traced earlier) does not.
            self.usual = self.model.train_function
            self.model.train_function = self.model.make_train_function(force=True)

        def on_train_batch_end(self, batch, logs=None):
            if self.target is None:
                return
            if TF1:
                _tf1_run_with(self.model, compiled=self.usual)
            else:
                tf.debugging.experimental.disable_dump_debug_info()
                self.model.train_function = self.usual
            self.target = None

    return DataDump()


def _profiler(folder: str):
    """A callback that records a profiler trace of PROFILE_STEPS training steps,
    after the first PROFILE_SKIP_STEPS of the run, viewable in TensorBoard:
    TF 2's profiler (Profile tab); in TF 1.15, full-trace run metadata (Graphs
    tab) and a Chrome trace (timeline_step_<n>.json, for chrome://tracing)."""
    from compat import TF1, keras, tf

    class Profiler(keras.callbacks.Callback):
        seen = traced = 0
        tracing = False

        def on_train_batch_begin(self, batch, logs=None):
            if self.tracing or self.seen < PROFILE_SKIP_STEPS or self.traced >= PROFILE_STEPS:
                return
            self.tracing = True
            if TF1:
                self.metadata = tf.compat.v1.RunMetadata()
                self.writer = tf.compat.v1.summary.FileWriter(folder)
                self.usual = _tf1_run_with(
                    self.model,
                    tf.compat.v1.RunOptions(
                        trace_level=tf.compat.v1.RunOptions.FULL_TRACE, output_partition_graphs=True
                    ),
                    self.metadata,
                )
            else:
                tf.profiler.experimental.start(folder)

        def on_train_batch_end(self, batch, logs=None):
            self.seen += 1
            if not self.tracing:
                return
            self.traced += 1
            if TF1:
                from tensorflow.python.client import timeline

                step = _step(self.model) - 1
                self.writer.add_run_metadata(self.metadata, 'step_%d' % step, global_step=step)
                with open(os.path.join(folder, 'timeline_step_%d.json' % step), 'w') as f:
                    f.write(
                        timeline.Timeline(self.metadata.step_stats).generate_chrome_trace_format()
                    )
            if self.traced >= PROFILE_STEPS:
                self.finish()

        def on_train_end(self, logs=None):
            if self.tracing:  # the run (or this fit) ended before all the steps were traced
                self.finish()

        def finish(self) -> None:
            self.tracing = False
            if TF1:
                _tf1_run_with(self.model, compiled=self.usual)
                self.writer.close()
            else:
                tf.profiler.experimental.stop()

    return Profiler()


# ------------------------------------------------------------- description


def describe(cfg: dict) -> str:
    """What ``configure`` set up and the debugging aids in use, for --dry_run."""
    lines = ['Device: %s, precision: %s' % (cfg['device'], cfg['precision'])]
    if cfg['device'] == 'npu':
        adapter, why = import_adapter()
        if adapter is None:
            lines.append(
                'Ascend adapter missing (%s): a real run stops here with exit code 2' % why
            )
        if _tf_generation() == 1:
            lines.append('NPU session config (tf.compat.v1.ConfigProto):')
            lines.append(str(npu_session_config(cfg)).rstrip())
        else:
            lines.append('NPU options (npu_device.global_options(), then npu.open().as_default()):')
            lines += ['  %s = %r' % option for option in npu_options(cfg)]
        return '\n'.join(lines)
    lines.append(
        'Overflow check: %s'
        % (
            'on, report in %s' % os.path.join(cfg['over_dump_path'], OVERFLOW_REPORT)
            if cfg['over_dump']
            else 'off'
        )
    )
    lines.append(
        'Data dump: %s'
        % (
            'steps %s into %s' % (cfg['data_dump_step'], cfg['data_dump_path'])
            if cfg['data_dump_flag']
            else 'off'
        )
    )
    lines.append(
        'Profiling: %s'
        % (
            '%d steps after the first %d, into %s'
            % (PROFILE_STEPS, PROFILE_SKIP_STEPS, cfg['profiling_path'])
            if cfg['profiling']
            else 'off'
        )
    )
    return '\n'.join(lines)
