"""The SESEMI method: preprocessing, label split, augmentation, input pipeline,
two-headed model, learning-rate schedule and dense evaluation.

Reference: Tran, "Exploring Self-Supervised Regularization for Supervised and
Semi-Supervised Learning", arXiv:1906.10343. Public names follow the reference
code (``global_contrast_normalize``, ``zca_whitener``, ``stratified_sample``,
``geometric_transform``, ``gaussian_noise``) so that people porting from it find
them. The numpy versions are the specification; the TensorFlow versions below
them do the same thing to whole batches inside the input pipeline.
"""

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

PROXY_LABELS = 6  # rotations by 0/90/180/270 degrees, left-right flip, up-down flip
IMAGES_PER_LABELED_STEP = (
    6  # the labeled branch takes batch_size × 6 images, as many as proxy views
)
MAX_SHIFT = 2  # random translation range in pixels, both axes
NOISE_STDDEV = 0.15
WEIGHT_DECAY = 5e-4
MODES = ('asl', 'sesemi', 'supervised')


class UsageError(Exception):
    """Bad flags or bad input data: reported as one line on stderr, exit code 2."""


# ---------------------------------------------------------------- preprocessing


def global_contrast_normalize(
    images: np.ndarray, scale: float = 55.0, eps: float = 1e-10
) -> np.ndarray:
    """Global contrast normalization, per image.

    x ← scale · (x − mean(x)) / ‖x − mean(x)‖₂ over all pixels and channels of
    the image; a norm below ``eps`` counts as 1 (flat images stay flat).

    Args:
        images: N×H×W×C array.
        scale: the target L2 norm of each image.
        eps: norms below this are replaced by 1.

    Returns:
        float32 array of the same shape.
    """
    flat = images.reshape(len(images), -1).astype(np.float32)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    norms[norms < eps] = 1.0
    return (scale * flat / norms).reshape(images.shape).astype(np.float32)


class ZCA:
    """A fitted ZCA whitening transform: x ↦ (flatten(x) − mean) · matrix."""

    def __init__(self, mean: np.ndarray, matrix: np.ndarray):
        self.mean = mean.astype(np.float32)
        self.matrix = matrix.astype(np.float32)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        flat = images.reshape(len(images), -1).astype(np.float32)
        return np.dot(flat - self.mean, self.matrix).reshape(images.shape)


def zca_whitener(images: np.ndarray, identity_scale: float = 0.1, eps: float = 1e-10) -> ZCA:
    """Fits ZCA whitening on a set of images.

    With Σ = cov(flattened images) and U·diag(S)·Uᵀ = svd(Σ + identity_scale·I),
    the whitening matrix is W = U·diag(1/√(S + eps))·Uᵀ, applied as (x − μ)·W.
    Σ + identity_scale·I is symmetric positive definite, so its SVD is its
    eigendecomposition; ``eigh`` computes it about 2.5× faster than ``svd``.

    Args:
        images: N×H×W×C (or N×D) training images, usually already GCN'd.
        identity_scale: the ridge added to the covariance before the SVD.
        eps: keeps 1/√S finite.

    Returns:
        A ``ZCA`` callable that whitens any array of images of the same size.
    """
    flat = images.reshape(len(images), -1).astype(np.float64)
    covariance = np.cov(flat, rowvar=False)
    s, u = np.linalg.eigh(covariance + identity_scale * np.eye(len(covariance)))
    matrix = np.dot(u * (1.0 / np.sqrt(s + eps)), u.T)
    return ZCA(flat.mean(axis=0), matrix)


# ---------------------------------------------------------------- label split


def stratified_sample(
    labels: np.ndarray, labels_per_class: int, n_classes: Optional[int] = None, seed: int = 1
) -> List[int]:
    """Picks the same number of labeled images from every class, reproducibly.

    One RandomState(seed) is shared across classes; for c = 0..K−1 in order, the
    indices of class c (ascending) are shuffled in place and the first
    ``labels_per_class`` kept. The result is concatenated in class order.

    Args:
        labels: integer class labels of the training set.
        labels_per_class: how many images to keep from each class.
        n_classes: K; defaults to the number of distinct labels.
        seed: the split's seed (the reference uses 1).

    Returns:
        Indices into ``labels``.
    """
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.RandomState(seed)
    n_classes = n_classes or len(set(labels.tolist()))
    samples = []  # type: List[int]
    for cls in range(n_classes):
        indices = np.where(labels == cls)[0]
        if len(indices) < labels_per_class:
            raise UsageError(
                'class %d has only %d training images, fewer than the %d labels '
                'per class asked for; lower --labels' % (cls, len(indices), labels_per_class)
            )
        rng.shuffle(indices)
        samples.extend(indices[:labels_per_class].tolist())
    return samples


def labeled_indices(labels: np.ndarray, n_labels: int, n_classes: int) -> List[int]:
    """The labeled split of the reference: all images, or ``stratified_sample``.

    Raises:
        UsageError: ``n_labels`` larger than the training set, not a multiple of
            the class count, or smaller than the class count.
    """
    n_train = len(labels)
    if n_labels == n_train:
        return list(range(n_train))
    if n_labels > n_train:
        raise UsageError(
            '--labels=%d is larger than the training set (%d images)' % (n_labels, n_train)
        )
    if n_labels < n_classes or n_labels % n_classes:
        raise UsageError(
            '--labels=%d must be a multiple of the %d classes (at least one per class), '
            'or %d for all images' % (n_labels, n_classes, n_train)
        )
    return stratified_sample(labels, n_labels // n_classes, n_classes)


# ------------------------------------------------ numpy transforms (reference)


def geometric_transform(image: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The self-supervised proxy task for one H×W×C image.

    Returns:
        (6×H×W×C images, 6×6 one-hot labels): rotations by 0, 90, 180 and 270
        degrees counter-clockwise, the left-right flip and the up-down flip.
    """
    views = [np.rot90(image, k) for k in range(4)] + [np.fliplr(image), np.flipud(image)]
    return np.stack(views).astype(np.float32), np.eye(PROXY_LABELS, dtype=np.float32)


def gaussian_noise(
    image: np.ndarray, stddev: float = NOISE_STDDEV, rng: Optional[np.random.RandomState] = None
) -> np.ndarray:
    """Adds N(0, stddev²) noise to every pixel."""
    rng = rng or np.random
    return image + stddev * rng.standard_normal(image.shape).astype(image.dtype)


def shift_numpy(images: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Translates image n by (dy[n], dx[n]) pixels with edge-mirroring fill.

    Equal to ``scipy.ndimage.shift(image, (dy, dx, 0), mode='reflect')`` for
    integer shifts up to ``MAX_SHIFT``: the border is filled "d c b a | a b c d".
    """
    m = MAX_SHIFT
    padded = np.pad(images, ((0, 0), (m, m), (m, m), (0, 0)), mode='symmetric')
    h, w = images.shape[1:3]
    return np.stack([p[m - y : m - y + h, m - x : m - x + w] for p, y, x in zip(padded, dy, dx)])


# ---------------------------------------------- TensorFlow batch transforms


def _tf():
    from compat import tf

    return tf


def _reflect(index, size: int):
    """Maps an index in [−size, 2·size) into [0, size) mirroring at the edges (… b a | a b …)."""
    tf = _tf()
    index = tf.where(index < 0, -index - 1, index)
    return tf.where(index >= size, 2 * size - 1 - index, index)


def _gather_pixels(images, rows, cols, samples=None):
    """out[n, i, j] = images[samples[n], rows[n, i, j], cols[n, i, j]], as one flat gather.

    ``rows`` and ``cols`` broadcast against each other to N×H'×W' (or N×V×H'×W');
    ``samples`` defaults to 0..N−1. One gather of whole pixels costs much less on
    CPU than padding, strided reversal or per-axis gathers, and it picks the
    step's images out of the whole training set at the same time.
    """
    tf = _tf()
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
        dy, dx: int32 tensors of shape [M], each in [−H, H] and [−W, W].
        flip: optional bool tensor [M]; image m is mirrored after its shift.
        samples: optional indices [M] of the images to take (default: all, M = N).
    """
    tf = _tf()
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
    tf = _tf()
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
    tf = _tf()
    size = tf.reduce_prod(shape)
    u = tf.random.stateless_uniform(
        tf.stack([2, (size + 1) // 2]), seed, minval=np.finfo(np.float32).tiny, maxval=1.0
    )
    radius, angle = tf.sqrt(-2.0 * tf.math.log(u[0])), (2 * np.pi) * u[1]
    z = tf.concat([radius * tf.cos(angle), radius * tf.sin(angle)], 0)
    return tf.reshape(z[:size], shape)


def add_noise(images, seed, stddev: float = NOISE_STDDEV):
    """Adds N(0, stddev²) noise to every pixel."""
    tf = _tf()
    return images + stddev * standard_normal(tf.shape(images), seed)


# Images of one stream in one step, at most: a per-image key is (seed, stream key × this + position).
MAX_IMAGES_PER_STEP = 2**24


def image_keys(key, first, n):
    """Stateless-random keys [n, 2] of the images at positions first..first+n−1 of
    a step's stream whose key is ``key`` = (seed, k): (seed, k·2²⁴ + position)."""
    tf = _tf()
    position = tf.range(tf.cast(n, tf.int64), dtype=tf.int64) + tf.cast(first, tf.int64)
    return tf.stack(
        [tf.fill([tf.cast(n, tf.int32)], key[0]), key[1] * MAX_IMAGES_PER_STEP + position], axis=1
    )


def add_noise_per_image(images, keys, stddev: float = NOISE_STDDEV):
    """Adds N(0, stddev²) noise to every pixel, image n's drawn from ``keys[n]``:
    an image's noise depends on its own key only, not on the batch it is in."""
    tf = _tf()
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
    tf = _tf()
    rows, cols = _proxy_index(int(images.shape[1]))
    views = _gather_pixels(images, tf.constant(rows)[None], tf.constant(cols)[None])
    labels = tf.tile(tf.eye(PROXY_LABELS), [tf.shape(images)[0], 1])
    return views, labels


# ---------------------------------------------------------------- input pipeline


class BatchSampler:
    """The image indices of every training step, as a pure function of the step.

    Each stream (labeled images, unlabeled pool) walks through a random
    permutation of its set and moves on to a fresh one when it runs out, as the
    reference's shuffled per-image Keras iterators do. Permutation k of stream s
    is drawn from RandomState([seed, s, k]), so the batches of step t depend on
    nothing but t: a resumed run continues with exactly the batches an
    uninterrupted run would have seen, with no sampler state to save.

    Args:
        labeled: indices (into the training set) of the labeled images.
        pool: indices of the unlabeled pool (empty for the supervised baseline).
        labeled_batch, pool_batch: images per step from each stream.
        seed: seeds the permutations.
    """

    def __init__(
        self,
        labeled: Sequence[int],
        pool: Sequence[int],
        labeled_batch: int,
        pool_batch: int,
        seed: int,
    ):
        self.sets = (np.asarray(labeled, np.int64), np.asarray(pool, np.int64))
        self.batches = (labeled_batch, pool_batch if len(pool) else 0)
        self.seed = seed
        self._cache = {}  # type: Dict[Tuple[int, int], np.ndarray]

    def _permutation(self, stream: int, epoch: int) -> np.ndarray:
        key = (stream, epoch)
        if key not in self._cache:
            if len(self._cache) > 8:
                self._cache.clear()
            rng = np.random.RandomState([self.seed, stream, epoch])
            self._cache[key] = rng.permutation(len(self.sets[stream]))
        return self._cache[key]

    def _take(self, stream: int, step: int) -> np.ndarray:
        size, n = self.batches[stream], len(self.sets[stream])
        positions = np.arange(step * size, (step + 1) * size)
        epochs, offsets = positions // max(n, 1), positions % max(n, 1)
        picks = np.empty(size, np.int64)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            picks[here] = self._permutation(stream, int(epoch))[offsets[here]]
        return self.sets[stream][picks]

    def batch(self, step: int) -> Tuple[np.ndarray, np.ndarray]:
        """Returns (labeled image indices, pool image indices) of training step ``step``."""
        return self._take(0, step), self._take(1, step)


def augment_batch(
    images, labels, labeled, pool, step, seed: int, hflip: bool, part=0, parts: int = 1
):
    """Builds one training step, or part ``part`` of its ``parts`` equal parts
    (one replica's slice), from the whole training set, in-graph.

    Labeled images ``images[labeled]``: random shift, left-right flip (if the
    dataset allows it), noise. Pool images ``images[pool]``: random shift, noise,
    then the 6 proxy transforms. Every random draw is keyed by (seed, step) and
    the image's position in the step, so an image's augmentation depends neither
    on thread scheduling nor on how many parts the step is split into.

    Returns:
        (inputs, targets) dicts keyed by the model's input and output names.
    """
    tf = _tf()
    keys = [tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64) * 8 + k]) for k in range(5)]
    n = tf.shape(labeled, out_type=tf.int64)[0]
    x = random_shift(
        images, keys[0], keys[1] if hflip else None, samples=labeled, part=part, parts=parts
    )
    part = tf.cast(part, tf.int64)
    inputs = {'super_data': add_noise_per_image(x, image_keys(keys[2], part * n, n))}
    targets = {'super_clf': tf.gather(labels, labeled)}
    if pool is not None:
        m = tf.shape(pool, out_type=tf.int64)[0]
        u = random_shift(images, keys[3], samples=pool, part=part, parts=parts)
        u = add_noise_per_image(u, image_keys(keys[4], part * m, m))
        inputs['self_data'], targets['self_clf'] = proxy_transforms(u)
    return inputs, targets


def gather_converted(images, labels, labeled, pool, convert: Callable):
    """Picks one step's images out of a uint8 training set and converts them.

    ``convert`` takes float32 images in [0, 1] (each value divided by 255) and
    returns the model's inputs (e.g. GCN); a step converts only its own images,
    so the training set stays uint8 (a quarter of float32's memory).

    Returns:
        (images, labels, labeled, pool) for ``augment_batch``: the step's converted
        images and their labels, and the positions of its labeled and pool images
        among them (pool None stays None).
    """
    tf = _tf()
    picks = labeled if pool is None else tf.concat([labeled, pool], 0)
    x = convert(tf.cast(tf.gather(images, picks), tf.float32) / 255.0)
    positions = tf.range(tf.shape(picks, out_type=picks.dtype)[0], dtype=picks.dtype)
    n = tf.shape(labeled, out_type=picks.dtype)[0]
    return x, tf.gather(labels, picks), positions[:n], None if pool is None else positions[n:]


STEPS_PER_CHUNK = 32  # steps whose indices the sampler hands to tf.data at once


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    sampler: BatchSampler,
    seed: int,
    hflip: bool,
    first_step: int = 0,
    convert: Optional[Callable] = None,
    parts: Sequence[int] = (0,),
    n_parts: int = 1,
):
    """The training input pipeline: an endless tf.data stream of augmented steps.

    The training images live in one tensor; a Python generator yields only each
    step's indices from ``sampler``; augmentation (gather, shift, flip, noise,
    proxy views) runs vectorised in-graph on parallel map workers, and steps are
    prefetched while the model trains.

    Under data parallelism every step is cut into ``n_parts`` equal slices, one
    per replica, and the stream yields, step after step, the slices ``parts``
    (those of this pipeline's replicas, in replica order). A slice holds exactly
    the images, augmented exactly as, the single-device step holds at its
    positions.

    Args:
        images: the training set, N×H×W×C float32 (preprocessed).
        labels: one-hot labels, N×K float32 (rows of unlabeled images are unused).
        sampler: yields the indices of each step; no pool batch = supervised baseline.
        seed: keys the in-graph augmentation.
        hflip: whether labeled images may be flipped left-right.
        first_step: the step the stream starts at (non-zero when resuming).
        convert: given, ``images`` are uint8 and each step's images are converted
            in the pipeline (see ``gather_converted``).
        parts: the slices of each step this stream yields.
        n_parts: the slices each step is cut into; must divide both batches.
    """
    tf = _tf()
    if any(batch % n_parts for batch in sampler.batches):
        raise ValueError(
            'batches of %s images cannot be cut into %d equal parts' % (sampler.batches, n_parts)
        )
    self_supervised = sampler.batches[1] > 0
    images, labels = tf.constant(images), tf.constant(labels)
    parts = np.asarray(parts, np.int64)

    def slices(batches):  # [steps, batch] → [steps × len(parts), batch / n_parts]
        batches = np.stack(batches)
        width = batches.shape[1] // n_parts
        cut = batches.reshape(len(batches), n_parts, width)[:, parts]
        return cut.reshape(len(batches) * len(parts), width)

    def chunks():  # STEPS_PER_CHUNK steps per call keeps Python off the per-step path
        start = first_step
        while True:
            steps = np.arange(start, start + STEPS_PER_CHUNK, dtype=np.int64)
            labeled, pool = zip(*(sampler.batch(step) for step in steps))
            yield (
                slices(labeled),
                slices(pool),
                np.repeat(steps, len(parts)),
                np.tile(parts, len(steps)),
            )
            start += STEPS_PER_CHUNK

    dataset = tf.data.Dataset.from_generator(
        chunks,
        (tf.int64, tf.int64, tf.int64, tf.int64),
        (
            tf.TensorShape([None, None]),
            tf.TensorShape([None, None]),
            tf.TensorShape([None]),
            tf.TensorShape([None]),
        ),
    )
    dataset = dataset.flat_map(lambda *chunk: tf.data.Dataset.from_tensor_slices(chunk))

    def build_step(labeled, pool, step, part):
        x, y, pool = images, labels, pool if self_supervised else None
        if convert is not None:
            x, y, labeled, pool = gather_converted(x, y, labeled, pool, convert)
        return augment_batch(x, y, labeled, pool, step, seed, hflip, part, n_parts)

    dataset = dataset.map(build_step, num_parallel_calls=tf.data.experimental.AUTOTUNE)
    return dataset.prefetch(4)


# ---------------------------------------------------------------- model


def lr_schedule(base_lr: float, max_iter: int, power: float):
    """base_lr · (1 − iteration/max_iter)^power, decaying to 0 at max_iter."""
    from compat import keras

    return keras.optimizers.schedules.PolynomialDecay(
        base_lr, decay_steps=max(1, max_iter), end_learning_rate=0.0, power=power
    )


def build_models(
    trunk,
    input_shape: Tuple[int, int, int],
    n_classes: int,
    self_supervised: bool,
    super_dropout: float,
):
    """Puts the supervised and the self-supervised heads on one shared trunk.

    Each head is global average pooling then a softmax Dense layer (glorot
    uniform, bias, L2 5e-4); the supervised head has dropout before its Dense.

    Args:
        trunk: the backbone ``keras.Model`` (shared weights for both branches).
        input_shape: H×W×C of one image.
        n_classes: classes of the supervised task.
        self_supervised: add the 6-way proxy head (False: supervised baseline).
        super_dropout: dropout rate before the supervised Dense.

    Returns:
        (train_model, inference_model): the model that is fitted, with inputs
        ``self_data``/``super_data`` and outputs ``self_clf``/``super_clf``,
        and the supervised branch alone, used for evaluation and saving.
    """
    from compat import keras

    layers = keras.layers
    # float32 heads: under a mixed-precision policy the softmax and the loss stay in float32.
    head = {
        'activation': 'softmax',
        'kernel_initializer': 'glorot_uniform',
        'use_bias': True,
        'kernel_regularizer': keras.regularizers.l2(WEIGHT_DECAY),
        'dtype': 'float32',
    }

    super_in = layers.Input(shape=input_shape, name='super_data')
    x = layers.GlobalAveragePooling2D(name='super_gap')(trunk(super_in))
    if super_dropout > 0:
        x = layers.Dropout(super_dropout, name='super_dropout')(x)
    super_out = layers.Dense(n_classes, name='super_clf', **head)(x)
    inference = keras.Model(super_in, super_out, name='sesemi_inference')
    if not self_supervised:
        return inference, inference

    # The proxy branch applies the same trunk, with BatchNorm accumulators of its own.
    from networks.layers import ProxyBranch

    self_in = layers.Input(shape=input_shape, name='self_data')
    y = layers.GlobalAveragePooling2D(name='self_gap')(ProxyBranch(trunk)(self_in))
    self_out = layers.Dense(PROXY_LABELS, name='self_clf', **head)(y)
    train = keras.Model([self_in, super_in], [self_out, super_out], name='sesemi')
    return train, inference


def compile_model(
    model, schedule, self_supervised: bool, wrap_optimizer: Optional[Callable] = None, **options
) -> None:
    """SGD with Nesterov momentum 0.9 on the joint loss.

    Keras adds the layers' L2 penalties to the total loss itself.

    Args:
        model: the two-headed (or, supervised, single-headed) model.
        schedule: the learning rate as a function of the step.
        self_supervised: whether the model has the self-supervised head.
        wrap_optimizer: optional function applied to the SGD optimizer, e.g. the
            device's loss scaling for mixed precision (see ``device.optimizer_wrapper``).
        **options: further ``compile`` arguments, e.g. ``jit_compile`` and
            ``steps_per_execution`` on TF 2 (see ``device.compile_options``).
    """
    from compat import keras

    # Supervised cross-entropy on the labeled branch, weight 1.
    losses = {'super_clf': 'categorical_crossentropy'}
    weights = {'super_clf': 1.0}
    if self_supervised:
        # Cross-entropy of the 6-way proxy task on the unlabeled branch, weight 1.
        losses['self_clf'] = 'categorical_crossentropy'
        weights['self_clf'] = 1.0
    # A single-output model logs only the total loss; the metric reports the
    # cross-entropy term alone, as 'super_clf_loss' does for the two-headed model.
    metrics = None if self_supervised else ['categorical_crossentropy']
    optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9, nesterov=True)
    if wrap_optimizer is not None:
        optimizer = wrap_optimizer(optimizer)
    model.compile(
        optimizer=optimizer, loss=losses, loss_weights=weights, metrics=metrics, **options
    )


# ---------------------------------------------------------------- evaluation


def dense_views(images: np.ndarray, hflip: bool, rng: np.random.RandomState) -> np.ndarray:
    """The reference's test-time views of each image.

    x, a copy t shifted by a random nonzero integer in {−2, −1, 1, 2} per axis,
    both again with N(0, 0.15²) noise, and (if ``hflip``) the left-right flips
    of those four.

    Returns:
        (N, V, H, W, C) with V = 8, or 4 without ``hflip``.
    """
    choices = np.array([-2, -1, 1, 2])
    dy, dx = rng.choice(choices, len(images)), rng.choice(choices, len(images))
    shifted = shift_numpy(images, dy, dx)
    views = [images, shifted, gaussian_noise(images, rng=rng), gaussian_noise(shifted, rng=rng)]
    if hflip:
        views += [v[:, :, ::-1] for v in views]
    return np.stack(views, axis=1)


def evaluate(
    model,
    images: np.ndarray,
    labels: np.ndarray,
    hflip: bool,
    seed: int = 0,
    chunk: int = 1000,
    batch_size: int = 256,
) -> Dict[str, float]:
    """Single-view and dense test error of a softmax classifier.

    Dense: average the softmax over ``dense_views`` of each image, then argmax.
    The views come from RandomState(seed), so repeated evaluations of the same
    weights give the same numbers.

    Returns:
        {'error_single': …, 'error_dense': …}, each 1 − accuracy.
    """
    rng = np.random.RandomState(seed)
    labels = np.asarray(labels).reshape(-1)
    single, dense = [], []
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk]
        views = dense_views(x, hflip, rng)
        n, v = views.shape[:2]
        probs = model.predict(
            views.reshape((n * v,) + x.shape[1:]), batch_size=batch_size, verbose=0
        )
        probs = probs.reshape(n, v, -1)
        single.append(probs[:, 0].argmax(axis=1))
        dense.append(probs.mean(axis=1).argmax(axis=1))
    return {
        'error_single': float(np.mean(np.concatenate(single) != labels)),
        'error_dense': float(np.mean(np.concatenate(dense) != labels)),
    }
