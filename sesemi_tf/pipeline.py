"""The training input pipeline: which images each step takes (``BatchSampler``)
and the tf.data stream that gathers and augments them in-graph (``make_dataset``).

Both branches of the reference's batch: ``batch_size × 6`` labeled images
(shift, flip, noise) and ``batch_size`` pool images, each expanded into its six
proxy views (shift, noise, rotations and flips). Batches are pure functions of
the step, so a resumed run sees what an uninterrupted one would have seen.
"""

from typing import Callable, Optional, Sequence, Tuple

import numpy as np

from sesemi_base.compat import TF1, do_not_convert, tf
from sesemi_base.errors import UsageError
from sesemi_tf.augment import add_noise_per_image, image_keys, proxy_transforms, random_shift


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
    picks = labeled if pool is None else tf.concat([labeled, pool], 0)
    x = convert(tf.cast(tf.gather(images, picks), tf.float32) / 255.0)
    positions = tf.range(tf.shape(picks, out_type=picks.dtype)[0], dtype=picks.dtype)
    n = tf.shape(labeled, out_type=picks.dtype)[0]
    return x, tf.gather(labels, picks), positions[:n], None if pool is None else positions[n:]


GRAPH_CONSTANT_LIMIT = 2**31  # bytes; TF 1.15 keeps the training set in its GraphDef


def check_graph_size(images: np.ndarray) -> None:
    """Refuses a training set that TF 1.15 cannot hold as a graph constant.

    Raises:
        UsageError: under TF 1.15, ``images`` take 2 GB or more.
    """
    if TF1 and images.nbytes >= GRAPH_CONSTANT_LIMIT:
        raise UsageError(
            'the %d training images take %.1f GB, more than a TensorFlow 1.15 graph can hold '
            '(2 GB); train with TensorFlow 2 (.venv), a smaller --image_size or fewer images'
            % (len(images), images.nbytes / 1e9)
        )


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

    @do_not_convert
    def build_step(labeled, pool, step, part):
        x, y, pool = images, labels, pool if self_supervised else None
        if convert is not None:
            x, y, labeled, pool = gather_converted(x, y, labeled, pool, convert)
        return augment_batch(x, y, labeled, pool, step, seed, hflip, part, n_parts)

    dataset = dataset.map(build_step, num_parallel_calls=tf.data.experimental.AUTOTUNE)
    return dataset.prefetch(4)
