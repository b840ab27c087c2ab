"""The method's augmentation as TensorFlow batch operations, for the input pipeline:
random shifts with edge-mirroring fill and left-right flips, Gaussian noise keyed
per image, and the six proxy views. Each is a pure function of its tensors and
stateless random keys; ``utils`` holds the numpy specification they follow
(``shift_numpy``, ``gaussian_noise``, ``geometric_transform``).
"""

from typing import Tuple

import numpy as np

from sesemi_base.compat import tf
from utils import MAX_SHIFT, NOISE_STDDEV, PROXY_LABELS


def _reflect(index, size: int):
    """Maps an index in [−size, 2·size) into [0, size) mirroring at the edges (… b a | a b …)."""
    index = tf.where(index < 0, -index - 1, index)
    return tf.where(index >= size, 2 * size - 1 - index, index)


def _gather_pixels(images, rows, cols, samples=None):
    """out[n, i, j] = images[samples[n], rows[n, i, j], cols[n, i, j]], as one flat gather.

    ``rows`` and ``cols`` broadcast against each other to N×H'×W' (or N×V×H'×W');
    ``samples`` defaults to 0..N−1. One gather of whole pixels costs much less on
    CPU than padding, strided reversal or per-axis gathers, and it picks the
    step's images out of the whole training set at the same time.
    """
    shape = tf.shape(images)
    h, w, c = shape[1], shape[2], shape[3]
    if samples is None:
        samples = tf.range(shape[0])
    base = tf.reshape(tf.cast(samples, tf.int32) * h * w, [-1] + [1] * (rows.shape.ndims - 1))
    index = base + rows * w + cols
    pixels = tf.gather(tf.reshape(images, [-1, c]), tf.reshape(index, [-1]))
    out_shape = tf.concat([[-1], tf.shape(index)[-2:], [c]], 0)
    return tf.reshape(pixels, out_shape)


def shift_images(images, dy, dx, flip=None, samples=None):
    """Batch version of ``shift_numpy``, optionally followed by a left-right flip.

    Args:
        images: N×H×W×C float tensor with static H and W.
        dy: int32 tensor of shape [M], rows to shift by, in [−H, H].
        dx: int32 tensor of shape [M], columns to shift by, in [−W, W].
        flip: optional bool tensor [M]; image m is mirrored after its shift.
        samples: optional indices [M] of the images to take (default: all, M = N).
    """
    h, w = int(images.shape[1]), int(images.shape[2])
    rows = _reflect(tf.range(h)[None, :] - dy[:, None], h)
    cols = _reflect(tf.range(w)[None, :] - dx[:, None], w)
    if flip is not None:
        cols = tf.where(tf.broadcast_to(flip[:, None], tf.shape(cols)), tf.reverse(cols, [1]), cols)
    return _gather_pixels(images, rows[:, :, None], cols[:, None, :], samples)


def random_shift(images, seed, flip_seed=None, samples=None, part=0, parts: int = 1):
    """Translates each image by a uniform integer in [−2, 2] pixels per axis and,
    when ``flip_seed`` is given, mirrors it left-right with probability 0.5.
    With ``samples``, works on ``images[samples]`` without copying them first.

    The images may be part ``part`` of ``parts`` equal parts of a step: the
    offsets are drawn for the whole step and this part takes its own, so that an
    image is moved the same whatever the number of parts.
    """
    n = tf.shape(images if samples is None else samples)[0]
    mine = tf.range(n) + tf.cast(part, tf.int32) * n
    d = tf.random.stateless_uniform(
        [2, n * parts], seed, minval=-MAX_SHIFT, maxval=MAX_SHIFT + 1, dtype=tf.int32
    )
    flip = None
    if flip_seed is not None:
        flip = tf.gather(tf.random.stateless_uniform([n * parts], flip_seed) < 0.5, mine)
    return shift_images(images, tf.gather(d[0], mine), tf.gather(d[1], mine), flip, samples)


def standard_normal(shape, seed):
    """N(0, 1) samples of ``shape`` (a shape tensor), keyed by ``seed``.

    Box–Muller on stateless uniforms: z = √(−2 ln u₁)·(cos 2πu₂, sin 2πu₂) gives
    two independent standard normals per pair (u₁, u₂). On CPU this takes half
    the time of ``tf.random.stateless_normal``, the costliest op of the pipeline.
    """
    size = tf.reduce_prod(shape)
    u = tf.random.stateless_uniform(
        tf.stack([2, (size + 1) // 2]), seed, minval=np.finfo(np.float32).tiny, maxval=1.0
    )
    radius, angle = tf.sqrt(-2.0 * tf.math.log(u[0])), (2 * np.pi) * u[1]
    z = tf.concat([radius * tf.cos(angle), radius * tf.sin(angle)], 0)
    return tf.reshape(z[:size], shape)


def add_noise(images, seed, stddev: float = NOISE_STDDEV):
    """Adds N(0, stddev²) noise to every pixel."""
    return images + stddev * standard_normal(tf.shape(images), seed)


# Images of one stream in one step, at most: a per-image key is
# (seed, stream key × this + position).
MAX_IMAGES_PER_STEP = 2**24


def image_keys(key, first, n):
    """Stateless-random keys [n, 2] of the images at positions first..first+n−1 of
    a step's stream whose key is ``key`` = (seed, k): (seed, k·2²⁴ + position)."""
    position = tf.range(tf.cast(n, tf.int64), dtype=tf.int64) + tf.cast(first, tf.int64)
    return tf.stack(
        [tf.fill([tf.cast(n, tf.int32)], key[0]), key[1] * MAX_IMAGES_PER_STEP + position], axis=1
    )


def add_noise_per_image(images, keys, stddev: float = NOISE_STDDEV):
    """Adds N(0, stddev²) noise to every pixel, image n's drawn from ``keys[n]``:
    an image's noise depends on its own key only, not on the batch it is in."""
    shape = tf.shape(images)[1:]
    noise = tf.map_fn(lambda key: standard_normal(shape, key), keys, dtype=tf.float32)
    return images + stddev * noise


def _proxy_index(size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Source (row, col) of every pixel of the 6 proxy views of a size×size image."""
    i, j = np.mgrid[0:size, 0:size]
    last = size - 1
    # np.rot90(img, k)[i, j] for k = 0..3, then fliplr, flipud.
    rows = [i, j, last - i, last - j, i, last - i]
    cols = [j, last - i, last - j, i, last - j, j]
    return np.stack(rows).astype(np.int32), np.stack(cols).astype(np.int32)


def proxy_transforms(images):
    """Batch version of ``geometric_transform`` for square images.

    Returns:
        (N·6 images, N·6×6 one-hot labels), the 6 views of image n at rows 6n..6n+5.
    """
    rows, cols = _proxy_index(int(images.shape[1]))
    views = _gather_pixels(images, tf.constant(rows)[None], tf.constant(cols)[None])
    labels = tf.tile(tf.eye(PROXY_LABELS), [tf.shape(images)[0], 1])
    return views, labels
