"""Checkpoints, exact resume and protection of the result folder.

A checkpoint holds the trained model's weights and the optimizer (momentum slots
and the iteration counter, from which the learning-rate schedule, the epoch and
the input pipeline's position all follow: batches and augmentation are pure
functions of the step, see ``sesemi_tf.pipeline.BatchSampler``). TensorFlow's
``CheckpointManager`` writes them under ``<result>/checkpoints`` and records the
newest in its state file only once a checkpoint is complete, so a kill at any
moment leaves the previous checkpoint usable.
"""

import errno
import os
import shutil
import signal
import sys
from typing import Dict, Optional

from networks.layers import DEBIAS_STATE, PROXY_STATE, BatchNormalization, batchnorm_layers
from sesemi_base.compat import create_optimizer_slots, restore_checkpoint, session_scope, tf
from sesemi_base.errors import UsageError
from sesemi_tf.checks import cluster_task
from sesemi_tf.parallel import collective_errors

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
    try:
        return str(cluster_task()[0])
    except UsageError:
        return ''


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


# What restoring a truncated, missing or damaged checkpoint raises, found by damaging
# checkpoint files on TF 1.15 and 2.x: TensorFlow's OpError (NotFoundError,
# DataLossError, OutOfRangeError, ...), IndexError (TF 2's reader of a cut data file),
# ValueError, AssertionError (``assert_existing_objects_matched``) and OSError.
CHECKPOINT_ERRORS = (tf.errors.OpError, IndexError, ValueError, AssertionError, OSError)


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
            The path restored, or None when there is no checkpoint.

        Raises:
            UsageError: the newest readable checkpoint has an earlier format
                (``check_format``), or there are checkpoints and none of them loads
                (starting afresh would overwrite the run they belong to).
        """
        create_optimizer_slots(self.model)
        manager = self.manager
        if self.source != self.folder:  # max_to_keep None: only reads the list
            manager = tf.train.CheckpointManager(
                self.checkpoint, self.source, max_to_keep=None, checkpoint_name='ckpt'
            )
        broken = []
        for path in reversed(manager.checkpoints):
            try:
                check_format(path, self.model)
                restore_checkpoint(self.checkpoint, path)
                return path
            except CHECKPOINT_ERRORS as err:
                reason = _first_line(err)
                warn('warning: skipping checkpoint %s, it does not load (%s)' % (path, reason))
                broken.append((path, reason))
        if broken:
            raise UsageError(
                'none of the %d checkpoints in %s loads (the newest, %s: %s); restore them, '
                'or pass another --result to start afresh'
                % ((len(broken), self.source) + broken[0])
            )
        return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


class Interrupt:
    """Turns SIGTERM and Ctrl-C into a request to checkpoint and stop after the
    current step; a second Ctrl-C stops at once."""

    def __init__(self):
        self.signal = None  # type: Optional[int]
        self._previous: Dict[int, object] = {}

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
