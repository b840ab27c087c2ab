"""The Ascend CANN TensorFlow adapter: where training on an Ascend 910 NPU differs.

The flags of the ModelZoo launch scripts become the adapter's options
(``npu_bridge`` session options on TF 1.15, ``npu_device.global_options()`` on
TF 2.x); mixed precision uses the adapter's loss-scale optimizer, and several
ranks (``--distribute=npu``) average their gradients and share rank 0's initial
weights through the adapter's HCCL collectives. This module is imported on every
device, but the adapter itself only where it is installed.
"""

import importlib
import json
from typing import Callable, List, Optional, Tuple

from sesemi_base.compat import TF1, keras, tf
from sesemi_tf.checks import ADAPTER, NPU_DEFAULT_PRECISION

# Dynamic loss scale of the ModelZoo scripts' NPU mixed-precision training.
NPU_LOSS_SCALE = {
    'init_loss_scale': 2**32,
    'incr_every_n_steps': 1000,
    'decr_every_n_nan_or_inf': 2,
    'decr_ratio': 0.5,
}


def import_adapter() -> Tuple[Optional[object], str]:
    """Imports the Ascend adapter of the running TensorFlow generation.

    Returns:
        (module, '') or (None, why it does not import).
    """
    name = ADAPTER[1 if TF1 else 2]
    try:
        return importlib.import_module(name), ''
    # A missing or broken install: no module, a shared library of CANN that does not load
    # (OSError, or TensorFlow's NotFoundError for a custom-op library), or a module of
    # another version without a name it needs.
    except (ImportError, OSError, AttributeError, tf.errors.NotFoundError) as err:
        first_line = str(err).splitlines()[0] if str(err) else ''
        return None, '%s: %s: %s' % (name, type(err).__name__, first_line)


def loss_scale_tf1(optimizer, all_reduce: Optional[Callable] = None):
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


def loss_scale_tf2(optimizer, all_reduce: Optional[Callable] = None):
    """The adapter's Keras loss-scale optimizer (dynamic scale), which also sees
    the saturating overflows of Ascend 910, around the optimizer (with its
    gradient ``all_reduce`` when given; the adapter all-reduces the overflow
    status across ranks itself)."""
    import npu_device

    if all_reduce is not None:
        optimizer = all_reduce(optimizer)
    return npu_device.train.optimizer.NpuLossScaleOptimizer(optimizer, dynamic=True)


def rewriter_config():
    """TensorFlow's ``RewriterConfig`` message (its ON/OFF values configure graph rewrites)."""
    from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig

    return RewriterConfig


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


def npu_settings(cfg) -> List[Tuple[str, object]]:
    """The NPU options the flags ask for, as (name, value) pairs; dumps and
    profiling appear only when enabled (the adapter's defaults are off)."""
    settings = [('precision_mode', cfg.precision or cfg.precision_mode or NPU_DEFAULT_PRECISION)]
    if cfg.data_dump_flag:
        settings += [
            ('enable_dump', True),
            ('dump_path', cfg.data_dump_path),
            ('dump_step', cfg.data_dump_step),
            ('dump_mode', 'output'),
        ]
    if cfg.over_dump:
        settings += [
            ('enable_dump_debug', True),
            ('dump_path', cfg.over_dump_path),
            ('dump_debug_mode', 'all'),
        ]
    if cfg.profiling:
        settings += [
            ('profiling_mode', True),
            ('profiling_options', profiling_options(cfg.profiling_path)),
        ]
    return settings


def npu_session_config(cfg):
    """The TF 1.15 session config that runs the graph on the NPU through the
    adapter's NpuOptimizer pass, with the flags' options in its parameter_map.

    Needs no adapter (the pass is looked up by name when the session starts).
    """
    config = tf.compat.v1.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    # The adapter's pass partitions the graph itself: TF's remapper (op fusion)
    # and memory optimizer would hand it ops the NPU does not know. OFF is the
    # value the adapter's documentation gives for both (in memory_optimization's
    # own enum it reads MANUAL: only user-requested swaps, none automatic).
    rewrite.remapping = rewriter_config().OFF
    rewrite.memory_optimization = rewriter_config().OFF
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


def npu_options(cfg) -> List[Tuple[str, object]]:
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


def hccl_optimizer_wrapper(adapter) -> Callable:
    """The adapter's gradient all-reduce around an optimizer. TF 1.15:
    ``npu_distributed_optimizer_wrapper`` of ``npu_bridge.npu_init`` (Keras or
    tf.train optimizers). TF 2: the optimizer's ``apply_gradients`` first
    averages the gradients with ``npu_device.distribute.all_reduce``."""
    if TF1:
        return adapter.npu_distributed_optimizer_wrapper

    def wrap(optimizer):
        apply_gradients = optimizer.apply_gradients

        def averaged(grads_and_vars, *args, **kwargs):
            grads, variables = zip(*grads_and_vars)
            grads = adapter.distribute.all_reduce(list(grads), 'mean')
            return apply_gradients(zip(grads, variables), *args, **kwargs)

        optimizer.apply_gradients = averaged
        return optimizer

    return wrap


def broadcast_callback(adapter):
    """TF 1.15: the adapter's ``NPUBroadcastGlobalVariablesCallback(0)``. TF 2: a
    callback that broadcasts the model's variables from rank 0 with
    ``npu_device.distribute.broadcast`` when training begins."""
    if TF1:
        return adapter.NPUBroadcastGlobalVariablesCallback(0)

    class Broadcast(keras.callbacks.Callback):
        done = False

        def on_train_begin(self, logs=None):
            if not self.done:  # once: a later fit continues from equal weights
                adapter.distribute.broadcast(self.model.variables, root_rank=0)
                self.done = True

    return Broadcast()
