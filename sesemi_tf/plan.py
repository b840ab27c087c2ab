"""The size of a run: its labeled split, its pool, and how many steps of which
batch it trains, worked out from the config and the data without TensorFlow, so
that an impossible ``--labels`` or ``--batch_size`` is one line on stderr before
TensorFlow loads.
"""

import dataclasses
import math

import numpy as np

import utils
from sesemi_base.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Plan:
    """The steps of a run for a number of replicas.

    Attributes:
        batch_size: pool images per step, all replicas together (``--batch_size``,
            times the replicas with ``--scale_batch``).
        base_lr: the learning rate at step 0 (scaled likewise).
        steps_per_epoch: steps of one pass over the pool.
        total_steps: the steps of the run (``--epochs``, capped by ``--max_steps``).
        epochs: epochs begun, the last one possibly cut short.
        images_per_step: images this process trains on per step (its replicas' slices).
    """

    batch_size: int
    base_lr: float
    steps_per_epoch: int
    total_steps: int
    epochs: int
    images_per_step: int


def labeled_split(cfg, y_train: np.ndarray, n_classes: int) -> np.ndarray:
    """The indices of the labeled training images, as the reference draws them.

    Raises:
        UsageError: --labels impossible for the training set.
    """
    n_labels = len(y_train) if cfg.labels is None else cfg.labels
    return np.asarray(utils.labeled_indices(y_train, n_labels, n_classes), dtype=np.int64)


def pool_size(cfg, n_train: int, n_labeled: int) -> int:
    """Images of the pool the proxy task draws from: the whole training set for
    sesemi, the labeled images otherwise (the supervised baseline's epochs are
    counted over them too)."""
    return n_train if cfg.mode == 'sesemi' else n_labeled


def make_plan(cfg, pool: int, replicas: int = 1, share: float = 1.0) -> Plan:
    """Sizes the run for ``replicas`` replicas, of which this process trains the
    fraction ``share`` of every step.

    Raises:
        UsageError: the global batch is larger than the pool.
    """
    factor = replicas if cfg.scale_batch else 1
    batch_size, base_lr = cfg.batch_size * factor, cfg.base_lr * factor
    steps_per_epoch = pool // batch_size
    if steps_per_epoch == 0:
        raise UsageError(
            '--batch_size=%d%s is larger than the %d images of the pool; lower it'
            % (cfg.batch_size, ' x %d replicas' % replicas if cfg.scale_batch else '', pool)
        )
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    branches = 2 if cfg.mode != 'supervised' else 1
    return Plan(
        batch_size=batch_size,
        base_lr=base_lr,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        epochs=math.ceil(total_steps / steps_per_epoch),
        images_per_step=int(batch_size * share) * utils.IMAGES_PER_LABELED_STEP * branches,
    )


def fit_phases(plan: Plan, step: int):
    """Keras fit calls that train from ``step`` to ``plan.total_steps``.

    Yields (initial_epoch, epochs, steps_per_epoch, first_step): a run resumed in
    the middle of an epoch first finishes that epoch, then goes on in whole
    epochs; a last epoch cut short by --max_steps is a call of its own, so that
    no execution of several steps runs past the end.
    """
    spe, end = plan.steps_per_epoch, plan.total_steps
    if step % spe and step < end:
        steps = min(spe - step % spe, end - step)
        yield step // spe, step // spe + 1, steps, step
        step += steps
    whole = end - end % spe
    if step < whole:
        yield step // spe, whole // spe, spe, step
        step = whole
    if step < end:
        yield step // spe, step // spe + 1, end - step, step
