"""The SESEMI method in numpy, as the specification: preprocessing (GCN, ZCA),
the labeled split, the reference transforms (proxy task, noise, shifts) and the
dense test views.

Reference: Tran, "Exploring Self-Supervised Regularization for Supervised and
Semi-Supervised Learning", arXiv:1906.10343. Public names follow the reference
code (``global_contrast_normalize``, ``zca_whitener``, ``stratified_sample``,
``geometric_transform``, ``gaussian_noise``) so that people porting from it find
them. ``sesemi_tf.augment`` does the same to whole batches in TensorFlow, inside
the input pipeline, and the tests hold it to these functions.
"""

from typing import List, Optional, Tuple

import numpy as np

from sesemi_base.errors import UsageError

PROXY_LABELS = 6  # rotations by 0/90/180/270 degrees, left-right flip, up-down flip
# The labeled branch takes batch_size × 6 images, as many as the proxy views.
IMAGES_PER_LABELED_STEP = 6
MAX_SHIFT = 2  # random translation range in pixels, both axes
NOISE_STDDEV = 0.15
WEIGHT_DECAY = 5e-4
MODES = ('asl', 'sesemi', 'supervised')


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
        """Whitens N images of the fitted size."""
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


def preprocess(x_train: Optional[np.ndarray], x_test: np.ndarray, zca: bool):
    """The reference's preprocessing of a run: GCN on both sets, then (if ``zca``)
    ZCA fitted on the training set and applied to both.

    ``x_train`` may be None when there is no ZCA to fit (the input pipeline then
    normalises the training images itself).

    Returns:
        (x_train, x_test, the fitted ``ZCA`` or None), the ZCA for the model file.
    """
    x_test = global_contrast_normalize(x_test)
    if x_train is not None:
        x_train = global_contrast_normalize(x_train)
    whiten = None
    if zca:
        whiten = zca_whitener(x_train)
        x_train, x_test = whiten(x_train), whiten(x_test)
    return x_train, x_test, whiten


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
