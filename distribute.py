"""Data-parallel training: which engine splits the steps across devices, the
slice of every step each replica trains on, and the Ascend HCCL wiring.

    --distribute   engine                                          replicas
    none           one device                                      1
    mirrored       tf.distribute.MirroredStrategy (TF 2.x):        the visible GPUs, or
                   gradients all-reduced every step                --cpu_replicas CPU devices
    multi_worker   tf.distribute.MultiWorkerMirroredStrategy       every device of every
                   (TF 2.x): one process per worker, cluster       worker (one per worker
                   from TF_CONFIG, collectives over gRPC           on CPU)
    npu            the CANN adapter's HCCL collectives, one        RANK_SIZE
                   process per device (RANK_ID, RANK_SIZE)

``--batch_size`` stays the global batch of a step: every step's indices come
from ``utils.BatchSampler`` (a function of the step alone, so resume is exact)
and each replica trains on its equal slice of that step (``utils.make_dataset``
with ``parts``); per-image random keys make each image's augmentation the one
a single device gives it. The loss of each replica is the mean over its slice
and the gradients are averaged over the replicas, so a step's update is that of
the whole batch. ``--scale_batch`` instead multiplies the batch by the number
of replicas and the learning rate with it (linear scaling), for throughput.

BatchNorm normalises with each replica's own slice unless ``--sync_bn``, which
makes the statistics those of the whole step (``networks.layers``). TF 1.15 has
no strategy here (its Keras cannot run this model under MirroredStrategy), and
the adapter has no synchronised BatchNorm: both are refused. The test set is
evaluated, and model.h5 written, by a plain copy of the inference model holding
the replicas' mean moving statistics (what checkpoints and model.h5 store), so
the figures do not depend on how a strategy would split the test batches.

Multi-worker runs follow TensorFlow's rules: worker 0 is the chief and alone
writes the result folder (metrics, logs, TensorBoard, model.h5); every worker
takes part in saving a checkpoint (reading the replicas' BatchNorm statistics
is a collective), the others into a temporary folder that is removed again;
on --resume every worker restores the chief's newest checkpoint. The workers
agree after every execution whether one of them received SIGTERM or Ctrl-C, so
they all checkpoint the same step and stop; a non-finite loss is seen by all
(Keras reports losses averaged over the replicas); a worker that dies makes the
others' next collective fail (``collective_errors``), and they stop with
exit code 4 (``EXIT_PEER_FAILED``) instead of waiting.

The entry calls ``define_flags`` and ``check_flags`` before TensorFlow loads,
``configure`` after ``device.configure`` (which returns the ``DataParallel``
that holds the strategy), builds the model in its ``scope()`` and takes the
training stream, the optimizer wrapper and the callbacks from it.
"""

import contextlib
import importlib.util
import json
import os
from typing import Callable, List, Optional, Sequence, Tuple

from absl import flags

from utils import UsageError

STRATEGIES = ('none', 'mirrored', 'multi_worker', 'npu')
EXIT_PEER_FAILED = 4  # exit code of a worker whose peer failed
LAUNCHER = 'test/train_multi_worker.sh'


def define_flags(fv: flags.FlagValues) -> None:
    """Defines --distribute, --cpu_replicas, --scale_batch and --sync_bn on ``fv``."""
    flags.DEFINE_enum(
        'distribute',
        'none',
        STRATEGIES,
        'Data-parallel training. none (default): '
        'one device; mirrored: tf.distribute.MirroredStrategy over the visible GPUs '
        '(or --cpu_replicas CPU devices), TF 2 only; multi_worker: '
        'tf.distribute.MultiWorkerMirroredStrategy, one process per worker, cluster '
        'from TF_CONFIG (see %s), TF 2 only; npu: Ascend HCCL, one '
        'process per device, from RANK_ID and RANK_SIZE (needs --device=npu).' % LAUNCHER,
        flag_values=fv,
    )
    flags.DEFINE_integer(
        'cpu_replicas',
        0,
        '--distribute=mirrored: mirror over this many logical '
        'CPU devices instead of the GPUs (implies --device=cpu); 0 (default): off.',
        lower_bound=0,
        flag_values=fv,
    )
    flags.DEFINE_boolean(
        'scale_batch',
        False,
        'Multiply --batch_size and --base_lr by the number '
        'of replicas (default off: --batch_size is the global batch of a step, '
        'split across the replicas).',
        flag_values=fv,
    )
    flags.DEFINE_boolean(
        'sync_bn',
        False,
        'BatchNorm statistics over the whole step, all replicas '
        'together (TF 2 strategies only; default off: per replica).',
        flag_values=fv,
    )


def tf1_installed() -> bool:
    """Whether the installed TensorFlow is 1.15, found without importing it (only
    that release ships a ``tensorflow_core`` package)."""
    return importlib.util.find_spec('tensorflow_core') is not None


def npu_rank() -> Tuple[int, int]:
    """(RANK_ID, RANK_SIZE) of this process, as the 8p launch scripts set them.

    Raises:
        UsageError: not integers, or RANK_ID outside 0..RANK_SIZE−1.
    """
    texts = os.environ.get('RANK_ID', '0'), os.environ.get('RANK_SIZE', '1')
    try:
        rank, size = int(texts[0]), int(texts[1])
    except ValueError:
        rank = size = -1
    if size < 1 or not 0 <= rank < size:
        raise UsageError(
            '--distribute=npu needs RANK_ID in 0..RANK_SIZE-1 and RANK_SIZE >= 1 in '
            'the environment (got RANK_ID=%s, RANK_SIZE=%s); start it with '
            'test/train_full_8p.sh' % texts
        )
    return rank, size


def cluster_task() -> Tuple[int, int]:
    """(this worker's index, number of workers) from TF_CONFIG, which
    MultiWorkerMirroredStrategy reads too.

    Raises:
        UsageError: TF_CONFIG missing, not JSON, or without a worker list and
            this process's worker task in it.
    """
    text = os.environ.get('TF_CONFIG', '')
    try:
        config = json.loads(text)
        workers, task = config['cluster']['worker'], config['task']
        index = task['index']
        ok = (
            isinstance(workers, list)
            and workers
            and task.get('type') == 'worker'
            and isinstance(index, int)
            and 0 <= index < len(workers)
            and set(config['cluster']) == {'worker'}
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise UsageError(
            '--distribute=multi_worker needs TF_CONFIG in the environment, e.g. '
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": '
            '"worker", "index": 0}} (workers only; index 0 is the chief); got %s; '
            'start local workers with %s' % (text and repr(text) or 'none', LAUNCHER)
        )
    return index, len(workers)


def known_replicas(cfg: dict) -> Optional[int]:
    """The number of replicas when the flags and environment fix it (None for
    GPUs, counted once TensorFlow runs)."""
    if cfg['distribute'] == 'none':
        return 1
    if cfg['distribute'] == 'npu':
        return npu_rank()[1]
    if cfg['distribute'] == 'multi_worker':
        return cluster_task()[1] if cfg['device'] == 'cpu' else None
    return cfg['cpu_replicas'] or None


def check_flags(cfg: dict) -> None:
    """Refuses settings that cannot hold together. Imports no TensorFlow.

    --cpu_replicas with --device=auto selects the CPU in ``cfg``.

    Raises:
        UsageError: a strategy without its device or TensorFlow generation, a
            flag that needs a strategy without one, --batch_size not divisible
            by the number of replicas.
    """
    kind = cfg['distribute']
    if kind == 'npu' and cfg['device'] != 'npu':
        raise UsageError(
            '--distribute=npu needs --device=npu (the HCCL collectives of the Ascend '
            'adapter); use --distribute=mirrored on CPU/GPU'
        )
    strategy = kind in ('mirrored', 'multi_worker')  # tf.distribute's
    if strategy and cfg['device'] == 'npu':
        raise UsageError('--distribute=%s does not run on an NPU; use --distribute=npu' % kind)
    if strategy and tf1_installed():
        raise UsageError(
            "--distribute=%s needs TensorFlow 2 (.venv): TensorFlow 1.15's "
            'Keras cannot train this model under a distribution strategy' % kind
        )
    if strategy and cfg['xla'] == 'on':
        raise UsageError(
            '--xla=on is not available with --distribute=%s (the gradient '
            'all-reduce would have to run inside the compiled step, which this '
            'project has not verified); leave --xla at auto' % kind
        )
    if kind == 'multi_worker':
        cluster_task()
    if cfg['cpu_replicas'] and kind != 'mirrored':
        raise UsageError('--cpu_replicas=%d needs --distribute=mirrored' % cfg['cpu_replicas'])
    if cfg['cpu_replicas'] and cfg['device'] not in ('auto', 'cpu'):
        raise UsageError(
            '--cpu_replicas mirrors over CPU devices; it cannot be used with '
            '--device=%s' % cfg['device']
        )
    if cfg['cpu_replicas']:
        cfg['device'] = 'cpu'
    if cfg['sync_bn'] and kind == 'none':
        raise UsageError(
            '--sync_bn needs --distribute=mirrored or multi_worker (one device '
            'has global statistics already)'
        )
    if cfg['sync_bn'] and kind == 'npu':
        raise UsageError(
            '--sync_bn is not available with --distribute=npu (the Ascend adapter has '
            'no synchronised BatchNorm); drop it to use per-device statistics'
        )
    if cfg['scale_batch'] and kind == 'none':
        raise UsageError(
            '--scale_batch needs --distribute (it multiplies the batch by the number of replicas)'
        )
    replicas = known_replicas(cfg)
    if replicas:
        check_batch(cfg, replicas)


def check_batch(cfg: dict, replicas: int) -> None:
    """Raises UsageError when --batch_size cannot be split into ``replicas`` equal slices."""
    if not cfg['scale_batch'] and cfg['batch_size'] % replicas:
        raise UsageError(
            '--batch_size=%d cannot be split across %d replicas; use a multiple of '
            '%d, or --scale_batch to give each replica %d images'
            % (cfg['batch_size'], replicas, replicas, cfg['batch_size'])
        )


def scaled(cfg: dict, replicas: int) -> Tuple[int, float]:
    """(global batch size, base learning rate) of the run: the flags' values, or
    both multiplied by ``replicas`` with --scale_batch."""
    factor = replicas if cfg['scale_batch'] else 1
    return cfg['batch_size'] * factor, cfg['base_lr'] * factor


class DataParallel:
    """The data parallelism of a run, from ``configure``.

    Attributes:
        kind: the --distribute value.
        strategy: the tf.distribute strategy whose scope the model is built in
            (TensorFlow's default, one-device strategy for none and npu).
        replicas: the number of replicas training each step together.
        parts: the slices of every step this process feeds (all of them for
            mirrored, where the strategy hands them out; its worker's for
            multi_worker; RANK_ID's for npu).
        adapter: the Ascend adapter module (npu), else None.
        worker: this process's worker index (multi_worker; 0 otherwise).
        chief: whether this process writes the result folder (worker 0).
    """

    def __init__(
        self,
        kind: str,
        strategy,
        replicas: int,
        parts: Sequence[int],
        adapter=None,
        worker: int = 0,
    ):
        self.kind, self.strategy, self.replicas = kind, strategy, replicas
        self.parts, self.adapter = list(parts), adapter
        self.worker, self.chief = worker, worker == 0
        self._agree = None  # the collective of ``agree``, made on first use

    def replicated(self) -> bool:
        """Whether a tf.distribute strategy keeps the variables in replicas (mirrored,
        multi_worker)."""
        return self.kind in ('mirrored', 'multi_worker')

    def checkpoint_folder(self, folder: str) -> str:
        """Where this process writes its checkpoints: ``folder`` for the chief, a
        temporary folder inside it for the other workers, removed after each save."""
        return folder if self.chief else os.path.join(folder, 'worker_%d_temp' % self.worker)

    def agree(self, flag: bool) -> bool:
        """multi_worker: whether ``flag`` is set on any worker (a collective every
        worker must call at the same point); else ``flag``."""
        if self.kind != 'multi_worker':
            return flag
        from compat import tf

        if self._agree is None:
            strategy = self.strategy

            def any_worker(value):
                def total(local):
                    context = tf.distribute.get_replica_context()
                    return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(local))

                return strategy.run(total, args=(value,))

            self._agree = tf.function(any_worker)
        votes = self.strategy.experimental_local_results(self._agree(tf.constant(float(flag))))
        return float(votes[0]) > 0

    def peer_errors(self) -> tuple:
        """``collective_errors`` under multi_worker; none otherwise."""
        return collective_errors() if self.kind == 'multi_worker' else ()

    def scope(self):
        """The context in which the model and its optimizer are built and restored."""
        return self.strategy.scope()

    def dataset(self, make: Callable[[List[int], int], object]):
        """The training stream: ``make(parts, n_parts)`` builds the tf.data stream of
        the given slices of every step; under a tf.distribute strategy each input
        pipeline (the one process of mirrored, each worker of multi_worker) streams
        its replicas' slices, which the strategy deals out in turn."""
        if not self.replicated():
            return make(self.parts, self.replicas)

        def per_pipeline(context):
            local = context.num_replicas_in_sync // context.num_input_pipelines
            first = context.input_pipeline_id * local
            return make(list(range(first, first + local)), context.num_replicas_in_sync)

        return self.strategy.distribute_datasets_from_function(per_pipeline)

    def all_reduce_wrapper(self) -> Optional[Callable]:
        """Npu with several ranks: wraps an optimizer so that its gradients are
        averaged over the ranks by HCCL before the update; else None (Keras
        all-reduces under a tf.distribute strategy itself)."""
        if self.kind != 'npu' or self.replicas == 1 or self.adapter is None:
            return None
        return hccl_optimizer_wrapper(self.adapter)

    def callbacks(self) -> list:
        """Npu with several ranks: the callback that gives every rank rank 0's
        initial weights before the first step."""
        if self.kind != 'npu' or self.replicas == 1 or self.adapter is None:
            return []
        return [broadcast_callback(self.adapter)]


def collective_errors() -> tuple:
    """The TensorFlow errors by which a collective reports a failed or vanished peer."""
    from compat import tf

    return (
        tf.errors.UnavailableError,
        tf.errors.DeadlineExceededError,
        tf.errors.AbortedError,
        tf.errors.CancelledError,
    )


def configure(cfg: dict, adapter=None) -> DataParallel:
    """Creates the strategy (after ``device.configure``, before the model is built).

    Args:
        cfg: the flags, with the device in use.
        adapter: the Ascend adapter module on an NPU (``device.import_adapter``).

    Raises:
        UsageError: mirrored without GPUs or --cpu_replicas; --batch_size not
            divisible by the replicas found.
    """
    from compat import tf

    kind = cfg['distribute']
    if kind == 'none':
        parallel = DataParallel(kind, tf.distribute.get_strategy(), 1, [0])
    elif kind == 'npu':
        rank, size = npu_rank()
        parallel = DataParallel(kind, tf.distribute.get_strategy(), size, [rank], adapter)
    elif kind == 'multi_worker':
        parallel = _multi_worker()
    else:
        parallel = _mirrored(cfg)
    check_batch(cfg, parallel.replicas)
    return parallel


def _multi_worker() -> DataParallel:
    """MultiWorkerMirroredStrategy from TF_CONFIG; each worker feeds its own
    replicas' slices (``DataParallel.dataset``)."""
    from compat import tf

    worker = cluster_task()[0]
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    local = len(strategy.extended.worker_devices)
    return DataParallel(
        'multi_worker',
        strategy,
        strategy.num_replicas_in_sync,
        range(worker * local, (worker + 1) * local),
        worker=worker,
    )


def _mirrored(cfg: dict) -> DataParallel:
    from compat import tf

    if cfg['cpu_replicas']:
        cpu = tf.config.list_physical_devices('CPU')[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * cfg['cpu_replicas']
        )
        devices = ['/cpu:%d' % i for i in range(cfg['cpu_replicas'])]
    else:
        devices = ['/gpu:%d' % i for i in range(len(tf.config.list_physical_devices('GPU')))]
        if not devices:
            raise UsageError(
                '--distribute=mirrored found no GPU; pass --cpu_replicas=N to '
                'mirror over N CPU devices'
            )
    strategy = tf.distribute.MirroredStrategy(devices)
    return DataParallel(
        'mirrored', strategy, strategy.num_replicas_in_sync, range(strategy.num_replicas_in_sync)
    )


def hccl_optimizer_wrapper(adapter) -> Callable:
    """The adapter's gradient all-reduce around an optimizer. TF 1.15:
    ``npu_distributed_optimizer_wrapper`` of ``npu_bridge.npu_init`` (Keras or
    tf.train optimizers). TF 2: the optimizer's ``apply_gradients`` first
    averages the gradients with ``npu_device.distribute.all_reduce``."""
    from compat import TF1

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
    from compat import TF1, keras

    if TF1:
        return adapter.NPUBroadcastGlobalVariablesCallback(0)

    class Broadcast(keras.callbacks.Callback):
        done = False

        def on_train_begin(self, logs=None):
            if not self.done:  # once: a later fit continues from equal weights
                adapter.distribute.broadcast(self.model.variables, root_rank=0)
                self.done = True

    return Broadcast()


def network_scope(cfg: dict):
    """The context in which the networks are built: whole-step BatchNorm
    statistics with --sync_bn."""
    if not cfg['sync_bn']:
        return contextlib.nullcontext()
    from networks.layers import global_batch_statistics

    return global_batch_statistics()
