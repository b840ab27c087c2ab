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
from ``sesemi_tf.pipeline.BatchSampler`` (a function of the step alone, so resume is exact)
and each replica trains on its equal slice of that step (``sesemi_tf.pipeline.make_dataset``
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

The flags are checked before TensorFlow loads (``sesemi_tf.checks``);
``configure`` runs after ``sesemi_tf.device.configure`` and returns the
``DataParallel`` that holds the strategy; the model is built in its ``scope()``
and the training stream, the optimizer wrapper and the callbacks come from it.
"""

import contextlib
import os
from typing import Callable, List, Optional, Sequence

from networks.layers import global_batch_statistics
from sesemi_base.compat import tf
from sesemi_base.errors import UsageError
from sesemi_tf import npu
from sesemi_tf.checks import check_batch, cluster_task, npu_rank

EXIT_PEER_FAILED = 4  # exit code of a worker whose peer failed


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
        return npu.hccl_optimizer_wrapper(self.adapter)

    def callbacks(self) -> list:
        """Npu with several ranks: the callback that gives every rank rank 0's
        initial weights before the first step."""
        if self.kind != 'npu' or self.replicas == 1 or self.adapter is None:
            return []
        return [npu.broadcast_callback(self.adapter)]


def collective_errors() -> tuple:
    """The TensorFlow errors by which a collective reports a failed or vanished peer."""
    return (
        tf.errors.UnavailableError,
        tf.errors.DeadlineExceededError,
        tf.errors.AbortedError,
        tf.errors.CancelledError,
    )


def configure(cfg, adapter=None) -> DataParallel:
    """Creates the strategy (after ``device.configure``, before the model is built).

    Args:
        cfg: the flags, with the device in use.
        adapter: the Ascend adapter module on an NPU (``device.import_adapter``).

    Raises:
        UsageError: mirrored without GPUs or --cpu_replicas; --batch_size not
            divisible by the replicas found.
    """
    kind = cfg.distribute
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


def _mirrored(cfg) -> DataParallel:
    if cfg.cpu_replicas:
        cpu = tf.config.list_physical_devices('CPU')[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * cfg.cpu_replicas
        )
        devices = ['/cpu:%d' % i for i in range(cfg.cpu_replicas)]
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


def network_scope(cfg):
    """The context in which the networks are built: whole-step BatchNorm
    statistics with --sync_bn."""
    if not cfg.sync_bn:
        return contextlib.nullcontext()
    return global_batch_statistics()
