"""Checkpoints, exact resume and protection of the result folder.

A checkpoint holds the trained model's weights and the optimizer (momentum slots
and the iteration counter, from which the learning-rate schedule, the epoch and
the input pipeline's position all follow: batches and augmentation are pure
functions of the step, see ``utils.BatchSampler``). TensorFlow's
``CheckpointManager`` writes them under ``<result>/checkpoints`` and records the
newest in its state file only once a checkpoint is complete, so a kill at any
moment leaves the previous checkpoint usable.
"""

import errno
import json
import os
import shutil
import signal
import sys
from typing import List, Optional

from utils import UsageError

# Flags whose change makes a saved run a different run.
RUN_DEFINING = (
    'data',
    'network',
    'labels',
    'mode',
    'batch_size',
    'epochs',
    'seed',
    'width',
    'base_lr',
    'lr_decay_power',
    'max_steps',
    'super_dropout',
    'image_size',
    'hflip',
    'zca',
    'test_fraction',
    'precision',  # the precision in effect: float32, mixed_bfloat16, an NPU mode
    'replicas',
    'scale_batch',
    'sync_bn',
)  # data parallelism (see distribute.py)
# What runs saved before a flag existed ran with.
RUN_DEFAULTS = {'replicas': 1, 'scale_batch': False, 'sync_bn': False}

# Fault injection for the crash tests: SESEMI_FAULT=<point>:<step> kills the
# process with SIGKILL when it reaches <point> at training step <step>;
# <point>:<step>:<worker> only the multi-worker worker of that index (TF_CONFIG).
FAULT_ENV = 'SESEMI_FAULT'


def fault_point(point: str, step: int) -> None:
    """Dies like a preempted job would, if the crash tests asked for it here."""
    fault = os.environ.get(FAULT_ENV, '')
    here = '%s:%d' % (point, step)
    if fault == here or (fault.startswith(here + ':') and fault == '%s:%s' % (here, _worker())):
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def _worker() -> str:
    """This process's worker index in TF_CONFIG ('' without a valid one)."""
    from distribute import cluster_task

    try:
        return str(cluster_task()[0])
    except UsageError:
        return ''


def write_atomic(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename, so that
    readers see either the old or the new content, never a partial file."""
    tmp = '%s.tmp%d' % (path, os.getpid())
    try:
        with open(tmp, 'w') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, obj) -> None:
    """Writes ``obj`` as indented JSON with sorted keys, atomically."""
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + '\n')


def folder_guard(path: str):
    """A check that raises OSError once ``path`` was removed or replaced.

    TensorFlow re-creates missing folders when it saves a checkpoint, so a
    removed result folder would otherwise come back half-empty.
    """
    identity = os.stat(path).st_ino

    def check() -> None:
        try:
            same = os.stat(path).st_ino == identity
        except OSError:
            same = False
        if not same:
            raise OSError(errno.ENOENT, 'the result folder was removed during the run', path)

    return check


def read_metrics(path: str) -> List[dict]:
    """The rows of a metrics.jsonl file (an incomplete last line is dropped)."""
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    break
    return rows


def write_metrics(path: str, rows: List[dict]) -> None:
    write_atomic(path, ''.join(json.dumps(r, sort_keys=True) + '\n' for r in rows))


def check_resumable(saved: dict, cfg: dict) -> None:
    """Refuses to resume a run whose defining flags changed. Keys that ``cfg``
    does not hold yet (the precision, before the device is configured) are left
    for a later call.

    Raises:
        UsageError: listing every flag whose saved value differs.
    """

    def name(key: str) -> str:  # resolved: precision from --precision_mode and the device,
        if key in ('precision', 'replicas'):  # replicas from the strategy
            return '%s %s' % (key, cfg[key])
        return '--%s=%s' % (key, cfg[key])

    diffs = [
        '%s (saved: %s)' % (name(k), saved.get(k, RUN_DEFAULTS.get(k)))
        for k in RUN_DEFINING
        if k in cfg and saved.get(k, RUN_DEFAULTS.get(k)) != cfg[k]
    ]
    if diffs:
        raise UsageError(
            'cannot resume: the saved run differs in %s; use the saved values or a '
            'new --result' % ', '.join(diffs)
        )


def check_format(path: str, model) -> None:
    """Refuses a checkpoint written before the BatchNorm layers kept the state of
    their zero-debiased moving averages, one per branch
    (``networks.layers.BatchNormalization``).

    Restoring one would leave that state at zero (or, for a model with a proxy
    branch, hold one accumulator fed by both branches), so the resumed run would
    not continue the one that wrote it; skipping it would silently start afresh.

    Raises:
        UsageError: ``model`` has such layers and the checkpoint holds none of
            their state, or none of the proxy branch's that the model keeps.
        Exception: the checkpoint's index cannot be read (a damaged checkpoint).
    """
    from compat import tf
    from networks.layers import DEBIAS_STATE, PROXY_STATE, BatchNormalization, batchnorm_layers

    ours = [layer for layer in batchnorm_layers(model) if isinstance(layer, BatchNormalization)]
    names = [name for name, _ in tf.train.list_variables(path)]
    if ours and not any('/%s/' % DEBIAS_STATE in name for name in names):
        raise UsageError(
            'checkpoint %s was written by an earlier version whose BatchNorm '
            'moving statistics were not zero-debiased, so the run cannot continue '
            'exactly; start it afresh with another --result' % path
        )
    if any(layer.proxy_debias is not None for layer in ours) and not any(
        '/%s/' % PROXY_STATE in name for name in names
    ):
        raise UsageError(
            'checkpoint %s was written by an earlier version whose BatchNorm '
            'layers fed both branches into one moving average, so the run cannot '
            'continue exactly; start it afresh with another --result' % path
        )


class Checkpoints:
    """Saves and restores a Keras model and its optimizer with ``CheckpointManager``.

    Args:
        folder: where the checkpoints are written.
        model: the model being trained (compiled, with its optimizer).
        keep: how many of the newest checkpoints to keep.
        source: where they are restored from (default ``folder``; a non-chief
            worker writes elsewhere but restores the chief's).
        temporary: remove ``folder`` after each save (a non-chief worker's part
            in a collective save, which TensorFlow needs written somewhere).
    """

    def __init__(
        self, folder: str, model, keep: int, source: Optional[str] = None, temporary: bool = False
    ):
        from compat import tf

        self.folder, self.source, self.temporary = folder, source or folder, temporary
        self.model = model
        self.step = 0

        outer = self

        class Checkpoint(tf.train.Checkpoint):
            """Lets the crash tests kill the process after a checkpoint's files are
            written and before the manager records it (TF 2 calls ``_write``, TF 1.15
            ``write``)."""

            def _write(self, *args, **kwargs):
                path = super()._write(*args, **kwargs)
                fault_point('checkpoint', outer.step)
                return path

            def write(self, *args, **kwargs):
                path = super().write(*args, **kwargs)
                fault_point('checkpoint', outer.step)
                return path

        self.checkpoint = Checkpoint(model=model, optimizer=model.optimizer)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, folder, max_to_keep=keep, checkpoint_name='ckpt'
        )

    def save(self, step: int) -> str:
        """Writes checkpoint ``ckpt-<step>`` and makes it the newest."""
        from compat import session_scope, tf
        from distribute import collective_errors

        self.step = step
        try:
            with session_scope():
                return self.manager.save(checkpoint_number=step)
        except collective_errors():
            raise  # a collective failed (multi_worker): another worker has gone
        except tf.errors.OpError as err:  # e.g. disk full or folder removed: report as I/O
            raise OSError(
                0, 'cannot write checkpoint (%s)' % err.message.splitlines()[0], self.folder
            ) from err
        finally:
            if self.temporary:
                shutil.rmtree(self.folder, ignore_errors=True)

    def restore_newest(self, warn=print) -> Optional[str]:
        """Restores the newest checkpoint that loads, skipping broken ones.

        Returns:
            The path restored, or None when there is no usable checkpoint.

        Raises:
            UsageError: the newest readable checkpoint has an earlier format (``check_format``).
        """
        from compat import create_optimizer_slots, restore_checkpoint, tf

        create_optimizer_slots(self.model)
        manager = self.manager
        if self.source != self.folder:  # max_to_keep None: only reads the list
            manager = tf.train.CheckpointManager(
                self.checkpoint, self.source, max_to_keep=None, checkpoint_name='ckpt'
            )
        for path in reversed(manager.checkpoints):
            try:
                check_format(path, self.model)
                restore_checkpoint(self.checkpoint, path)
                return path
            except UsageError:
                raise
            except Exception as err:  # a truncated or missing file shows up in several types
                warn(
                    'warning: skipping checkpoint %s, it does not load (%s)'
                    % (path, str(err).splitlines()[0] if str(err) else type(err).__name__)
                )
        return None


class Interrupt:
    """Turns SIGTERM and Ctrl-C into a request to checkpoint and stop after the
    current step; a second Ctrl-C stops at once."""

    def __init__(self):
        self.signal = None  # type: Optional[int]
        self._previous = {}  # type: Dict[int, object]

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False
