"""Dense evaluation on the test set: the softmax averaged over the reference's
test-time views of each image (``utils.dense_views``).
"""

from typing import Dict

import numpy as np

from utils import dense_views


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
