"""Precise BatchNorm statistics: every BatchNorm layer's mean and variance
recomputed at the final weights, as the plain average over a fixed set of
labeled-branch batches ("precise BN", as pycls calls it).

The moving averages the reference keeps lag the weights, which still move late
in a power-0.5 schedule; at the short budgets a CPU affords, recomputed
statistics lower the test error. The reference, the ModelZoo port and the
author's later library all evaluate with the moving averages, so this is an
option (``--precise_bn=N``, default 0) of the training entry and of
``evaluate.py``, never the default.
"""

from typing import Callable, Optional

import numpy as np

from networks.layers import fed_variance
from sesemi_base.compat import K, do_not_convert, keras, map_batches, tf
from sesemi_tf.pipeline import BatchSampler, make_dataset

SEED_OFFSET = 1000  # the batches' sampler and augmentation use the run's seed + this


def labeled_batches(
    images: np.ndarray,
    batch_images: int,
    seed: int,
    hflip: bool,
    convert: Optional[Callable] = None,
):
    """The fixed labeled-branch batches: the training pipeline's labeled sampler and
    augmentation (shift, flip, noise) from step 0, keyed by ``seed`` + SEED_OFFSET,
    so they are none of the batches the run trained on and the same every time.

    Args:
        images: the labeled training images (preprocessed, or uint8 with ``convert``).
        batch_images: images per batch, as in the run's labeled branch.
        seed: the run's seed.
        hflip: whether the labeled images may be flipped left-right.
        convert: for uint8 images, the preprocessing applied in the pipeline.

    Returns:
        An endless tf.data stream of (inputs, targets) as the training pipeline's:
        the images are ``inputs['super_data']``.
    """
    key = seed + SEED_OFFSET
    sampler = BatchSampler(np.arange(len(images)), [], batch_images, 0, key)
    no_labels = np.zeros((len(images), 1), np.float32)
    return make_dataset(images, no_labels, sampler, key, hflip, 0, convert)


def recompute(model, batches, count: int) -> None:
    """Sets the moving statistics of every BatchNorm layer of ``model`` to the plain
    average over ``count`` of ``batches`` of the batch mean and of the batch variance
    as the moving average is fed it (the unbiased variance × n / (n − 1 − ε), see
    ``networks.layers.fed_variance``), with the model in training mode (each layer
    normalising with its batch's statistics) and no weight changed.

    ``batches`` yields the training pipeline's (inputs, targets), as
    ``labeled_batches`` does. ``model`` is changed in place: give it a copy of
    the model being trained. Its
    BatchNorm layers must lie in one functional model (the model or its trunk)
    that takes the model's input.

    Raises:
        ValueError: ``count`` < 1, or no such functional model.
    """
    if count < 1:
        raise ValueError('precise BatchNorm needs at least one batch, not %d' % count)
    owner = _batchnorm_owner(model)
    layers = [layer for layer in owner.layers if isinstance(layer, keras.layers.BatchNormalization)]
    probe = keras.Model(owner.inputs, [layer.input for layer in layers])

    @do_not_convert
    def statistics(step):
        features = probe(step[0]['super_data'], training=True)
        if not isinstance(features, (list, tuple)):
            features = [features]
        out = []
        for layer, feature in zip(layers, features):
            f = tf.cast(feature, tf.float32)
            n = tf.cast(tf.size(f) // tf.shape(f)[-1], tf.float32)
            mean, variance = tf.nn.moments(f, axes=[0, 1, 2])
            out.append((mean, fed_variance(variance * n / (n - 1.0), n, layer.epsilon)))
        return out

    totals = None
    for batch in map_batches(batches, statistics, count):
        values = [(np.float64(m), np.float64(v)) for m, v in batch]
        totals = (
            values if totals is None else [(a + m, b + v) for (a, b), (m, v) in zip(totals, values)]
        )
    K.batch_set_value(
        [
            (variable, (total / count).astype(np.float32))
            for layer, sums in zip(layers, totals)
            for variable, total in zip((layer.moving_mean, layer.moving_variance), sums)
        ]
    )


def _batchnorm_owner(model):
    """The functional model among ``model`` and its nested models that holds the
    BatchNorm layers."""
    candidates = [model] + [layer for layer in model.layers if isinstance(layer, keras.Model)]
    owners = [
        m
        for m in candidates
        if any(isinstance(layer, keras.layers.BatchNormalization) for layer in m.layers)
    ]
    if (
        len(owners) != 1
        or owners[0].inputs[0].shape.as_list()[1:] != model.inputs[0].shape.as_list()[1:]
    ):
        raise ValueError(
            'model %s does not hold its BatchNorm layers in one functional '
            'model on its input' % model.name
        )
    return owners[0]
