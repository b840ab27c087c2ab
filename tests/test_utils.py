"""The SESEMI method pieces in utils.py, checked against numpy/scipy references
and against the formulas of the specification."""

import numpy as np
import pytest
from conftest import take, to_numpy
from scipy import ndimage

import utils
from sesemi_base.errors import UsageError
from sesemi_tf import augment, pipeline
from sesemi_tf.evaluation import evaluate
from sesemi_tf.model import build_models, lr_schedule


def test_gcn_matches_formula():
    rng = np.random.RandomState(0)
    x = rng.rand(5, 4, 4, 3).astype(np.float32)
    out = utils.global_contrast_normalize(x)
    for img, got in zip(x, out):
        flat = img.reshape(-1) - img.mean()
        np.testing.assert_allclose(got.reshape(-1), 55.0 * flat / np.linalg.norm(flat), rtol=1e-5)
    assert out.shape == x.shape and out.dtype == np.float32


def test_gcn_flat_image_uses_norm_one():
    x = np.full((1, 4, 4, 3), 0.7, np.float32)
    assert np.all(np.isfinite(utils.global_contrast_normalize(x)))
    np.testing.assert_allclose(utils.global_contrast_normalize(x), 0, atol=1e-6)


def test_zca_matrix_is_inverse_sqrt_of_regularised_covariance():
    rng = np.random.RandomState(0)
    x = rng.randn(200, 4, 4, 1) * np.linspace(0.5, 2, 16).reshape(1, 4, 4, 1)
    zca = utils.zca_whitener(x)
    flat = x.reshape(200, -1)
    cov = np.cov(flat, rowvar=False) + 0.1 * np.eye(16)
    w = zca.matrix.astype(np.float64)
    np.testing.assert_allclose(w, w.T, atol=1e-5)
    np.testing.assert_allclose(w @ cov @ w, np.eye(16), atol=1e-4)
    np.testing.assert_allclose(
        zca(x).reshape(200, -1), (flat - flat.mean(0)) @ w, rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(zca(x).reshape(200, -1).mean(0), 0, atol=1e-5)
    u, s, _ = np.linalg.svd(cov)  # the reference's construction
    np.testing.assert_allclose(w, u @ np.diag(1 / np.sqrt(s + 1e-10)) @ u.T, atol=1e-5)


def test_stratified_sample_counts_order_and_shared_generator():
    labels = np.random.RandomState(3).randint(0, 4, size=400)
    picked = utils.stratified_sample(labels, 7, n_classes=4)
    assert len(picked) == 28 and len(set(picked)) == 28
    assert [labels[i] for i in picked] == sorted(labels[i] for i in picked)  # class order
    assert picked == utils.stratified_sample(labels, 7, n_classes=4)  # deterministic
    # One RandomState(1) shared across classes, shuffling each class's ascending indices.
    rng = np.random.RandomState(1)
    expected = []
    for c in range(4):
        idx = np.where(labels == c)[0]
        rng.shuffle(idx)
        expected += idx[:7].tolist()
    assert picked == expected


def test_labeled_indices_all_and_bad_counts():
    labels = np.repeat(np.arange(10), 5)
    assert utils.labeled_indices(labels, 50, 10) == list(range(50))
    assert len(utils.labeled_indices(labels, 20, 10)) == 20
    for bad, word in ((60, 'larger'), (25, 'multiple'), (5, 'multiple')):
        with pytest.raises(UsageError, match=word):
            utils.labeled_indices(labels, bad, 10)
    with pytest.raises(UsageError, match='class 3'):
        utils.labeled_indices(np.array([0] * 9 + [1, 2] * 9 + [3]), 20, 4)


def test_geometric_transform_matches_numpy():
    img = np.random.RandomState(0).rand(32, 32, 3).astype(np.float32)
    views, labels = utils.geometric_transform(img)
    expected = [
        np.rot90(img, 0),
        np.rot90(img, 1),
        np.rot90(img, 2),
        np.rot90(img, 3),
        np.fliplr(img),
        np.flipud(img),
    ]
    np.testing.assert_array_equal(views, np.stack(expected))
    np.testing.assert_array_equal(labels, np.eye(6))


def test_proxy_transforms_in_graph_equal_numpy():
    from sesemi_base.compat import tf

    imgs = np.random.RandomState(1).rand(3, 32, 32, 3).astype(np.float32)
    views, labels = to_numpy(augment.proxy_transforms(tf.constant(imgs)))
    assert views.shape == (18, 32, 32, 3)
    for n in range(3):
        exp_views, exp_labels = utils.geometric_transform(imgs[n])
        np.testing.assert_array_equal(views[6 * n : 6 * n + 6], exp_views)
        np.testing.assert_array_equal(labels[6 * n : 6 * n + 6], exp_labels)


def test_shift_matches_scipy_reflect_for_every_offset():
    from sesemi_base.compat import tf

    img = np.random.RandomState(2).rand(1, 8, 8, 2).astype(np.float32)
    offsets = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
    batch = np.repeat(img, len(offsets), axis=0)
    dy = np.array([o[0] for o in offsets], np.int32)
    dx = np.array([o[1] for o in offsets], np.int32)
    got, got_flipped = to_numpy(
        [
            augment.shift_images(tf.constant(batch), tf.constant(dy), tf.constant(dx)),
            augment.shift_images(
                tf.constant(batch),
                tf.constant(dy),
                tf.constant(dx),
                tf.constant(np.arange(len(offsets)) % 2 == 0),
            ),
        ]
    )
    got_np = utils.shift_numpy(batch, dy, dx)
    for k, (y, x) in enumerate(offsets):
        expected = ndimage.shift(img[0], (y, x, 0), mode='reflect', order=0)
        np.testing.assert_array_equal(got[k], expected)
        np.testing.assert_array_equal(got_np[k], expected)
        np.testing.assert_array_equal(got_flipped[k], expected[:, ::-1] if k % 2 == 0 else expected)


def test_random_augmentations_are_seeded_and_in_range():
    from sesemi_base.compat import tf

    imgs = np.random.RandomState(3).rand(64, 8, 8, 1).astype(np.float32)
    seed = tf.constant([5, 7], tf.int64)
    flip_seed = tf.constant([5, 8], tf.int64)
    shifted, shifted_again, flipped, noisy = to_numpy(
        [
            augment.random_shift(tf.constant(imgs), seed),
            augment.random_shift(tf.constant(imgs), seed),
            augment.random_shift(tf.constant(imgs), seed, flip_seed),
            augment.add_noise(tf.constant(imgs), seed),
        ]
    )
    np.testing.assert_array_equal(shifted, shifted_again)
    found = set()
    for img, out in zip(imgs, shifted):
        match = [
            (y, x)
            for y in range(-2, 3)
            for x in range(-2, 3)
            if np.array_equal(out, utils.shift_numpy(img[None], [y], [x])[0])
        ]
        assert match
        found.add(match[0])
    assert len(found) > 10  # many of the 25 offsets occur
    # Same shifts as without the flip; about half the images are then mirrored.
    n_flipped = sum(np.array_equal(f, s[:, ::-1]) for s, f in zip(shifted, flipped))
    assert sum(np.array_equal(f, s) for s, f in zip(shifted, flipped)) + n_flipped == 64
    assert 16 < n_flipped < 48
    assert abs(np.std(noisy - imgs) - 0.15) < 0.01


def test_noise_is_standard_normal_and_seeded():
    from scipy import stats

    from sesemi_base.compat import tf

    seed = tf.constant([3, 9], tf.int64)
    z, again, other = to_numpy(
        [
            augment.standard_normal(tf.constant([7, 101, 3]), seed),
            augment.standard_normal(tf.constant([7, 101, 3]), seed),
            augment.standard_normal(tf.constant([7, 101, 3]), seed + 1),
        ]
    )
    assert z.shape == (7, 101, 3) and np.isfinite(z).all()
    np.testing.assert_array_equal(z, again)
    assert not np.allclose(z, other)
    assert stats.kstest(z.ravel(), 'norm').pvalue > 0.01
    # The two halves of Box-Muller are independent of each other.
    flat = z.ravel()
    assert abs(np.corrcoef(flat[:1060], flat[1060:2120])[0, 1]) < 0.1


def test_lr_schedule_start_middle_end():
    from sesemi_base.compat import to_float

    schedule = lr_schedule(0.05, 1000, 0.5)
    assert to_float(schedule(0)) == pytest.approx(0.05)
    assert to_float(schedule(500)) == pytest.approx(0.05 * 0.5**0.5, rel=1e-5)
    assert to_float(schedule(750)) == pytest.approx(0.05 * 0.25**0.5, rel=1e-5)
    assert to_float(schedule(1000)) == pytest.approx(0.0, abs=1e-9)


def test_dense_views():
    rng = np.random.RandomState(0)
    x = rng.rand(6, 8, 8, 3).astype(np.float32)
    views = utils.dense_views(x, True, np.random.RandomState(1))
    assert views.shape == (6, 8, 8, 8, 3)
    np.testing.assert_array_equal(views[:, 0], x)
    np.testing.assert_array_equal(views[:, 4], x[:, :, ::-1])
    np.testing.assert_array_equal(views[:, 5], views[:, 1, :, ::-1])
    assert abs(np.std(views[:, 2] - x) - 0.15) < 0.02
    for img, shifted in zip(x, views[:, 1]):
        offsets = [
            (y, z)
            for y in (-2, -1, 1, 2)
            for z in (-2, -1, 1, 2)
            if np.array_equal(shifted, utils.shift_numpy(img[None], [y], [z])[0])
        ]
        assert offsets  # a nonzero shift on both axes
    assert utils.dense_views(x, False, np.random.RandomState(1)).shape == (6, 4, 8, 8, 3)


def test_evaluate_perfect_and_chance_models():
    class Oracle:
        """Predicts class = sign of the mean pixel, robust to the views' noise."""

        def predict(self, x, batch_size=None, verbose=0):
            positive = x.reshape(len(x), -1).mean(axis=1) > 0
            return np.stack([~positive, positive], axis=1).astype(np.float32)

    x = np.concatenate([np.full((5, 8, 8, 1), -1.0), np.full((5, 8, 8, 1), 1.0)]).astype(np.float32)
    y = np.array([0] * 5 + [1] * 5)
    errors = evaluate(Oracle(), x, y, hflip=True, chunk=3)
    assert errors == {'error_single': 0.0, 'error_dense': 0.0}
    assert evaluate(Oracle(), x, 1 - y, hflip=False) == {
        'error_single': 1.0,
        'error_dense': 1.0,
    }


def test_batch_sampler_walks_permutations_and_depends_only_on_the_step():
    labeled_set, pool_set = np.arange(100, 110), np.arange(7)
    sampler = pipeline.BatchSampler(labeled_set, pool_set, labeled_batch=4, pool_batch=3, seed=0)
    steps = [sampler.batch(t) for t in range(7)]
    labeled = np.concatenate([s[0] for s in steps])  # 28 draws: epochs of 10, 10, 8
    assert sorted(labeled[:10]) == list(labeled_set) and sorted(labeled[10:20]) == list(labeled_set)
    assert not np.array_equal(labeled[:10], labeled[10:20])  # a fresh permutation each epoch
    pool = np.concatenate([s[1] for s in steps])
    assert sorted(pool[:7]) == list(pool_set) and sorted(pool[7:14]) == list(pool_set)
    # A new sampler (as after a restart) gives the same batches for any step, in any order.
    other = pipeline.BatchSampler(labeled_set, pool_set, 4, 3, seed=0)
    for t in (5, 2, 6):
        np.testing.assert_array_equal(other.batch(t)[0], steps[t][0])
        np.testing.assert_array_equal(other.batch(t)[1], steps[t][1])
    assert not np.array_equal(
        pipeline.BatchSampler(labeled_set, pool_set, 4, 3, seed=1).batch(0)[0], steps[0][0]
    )


def test_dataset_started_at_a_step_continues_the_stream():
    x = np.random.RandomState(0).rand(30, 32, 32, 3).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[np.arange(30) % 10]
    sampler = pipeline.BatchSampler(np.arange(30), np.arange(30), 12, 2, seed=4)
    whole = take(pipeline.make_dataset(x, y, sampler, seed=4, hflip=True), 4)
    resumed = take(pipeline.make_dataset(x, y, sampler, seed=4, hflip=True, first_step=2), 2)
    for a, b in zip(whole[2:], resumed):
        np.testing.assert_array_equal(a[0]['super_data'], b[0]['super_data'])
        np.testing.assert_array_equal(a[0]['self_data'], b[0]['self_data'])
        np.testing.assert_array_equal(a[1]['super_clf'], b[1]['super_clf'])


def test_training_dataset_batch_composition_and_determinism():
    rng = np.random.RandomState(0)
    x = rng.rand(40, 32, 32, 3).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[np.arange(40) % 10]

    def first_two(seed):
        sampler = pipeline.BatchSampler(np.arange(40), np.arange(40), 16 * 6, 16, seed=seed)
        return take(pipeline.make_dataset(x, y, sampler, seed=seed, hflip=True), 2)

    (inputs, targets), second = first_two(1)
    assert inputs['super_data'].shape == (96, 32, 32, 3)
    assert inputs['self_data'].shape == (96, 32, 32, 3)
    assert targets['super_clf'].shape == (96, 10)
    np.testing.assert_array_equal(targets['self_clf'], np.tile(np.eye(6), (16, 1)))
    again = first_two(1)
    np.testing.assert_array_equal(again[0][0]['super_data'], inputs['super_data'])
    np.testing.assert_array_equal(again[1][0]['self_data'], second[0]['self_data'])
    assert not np.array_equal(second[0]['super_data'], inputs['super_data'])
    # The 6 proxy views of one pool image are its rotations and flips.
    np.testing.assert_array_equal(inputs['self_data'][1], np.rot90(inputs['self_data'][0]))
    np.testing.assert_array_equal(inputs['self_data'][5], inputs['self_data'][0][::-1])
    # Each labeled image is a shifted, maybe mirrored, noisy copy of a training image
    # with its own label.
    for img, label in zip(inputs['super_data'][:8], targets['super_clf'][:8]):
        candidates = [k for k in range(40) if np.argmax(y[k]) == np.argmax(label)]
        best = min(
            np.abs(img - v).mean()
            for k in candidates
            for v in (
                utils.shift_numpy(x[k : k + 1], [a], [b])[0][:, ::f]
                for a in range(-2, 3)
                for b in range(-2, 3)
                for f in (1, -1)
            )
        )
        assert best < 0.15  # mean |noise| of N(0, 0.15²) is 0.12


def test_supervised_dataset_has_no_self_branch():
    x = np.zeros((20, 32, 32, 1), np.float32)
    y = np.eye(2, dtype=np.float32)[np.arange(20) % 2]
    sampler = pipeline.BatchSampler(np.arange(20), [], 12, 16, seed=0)
    ((inputs, targets),) = take(pipeline.make_dataset(x, y, sampler, seed=0, hflip=False))
    assert set(inputs) == {'super_data'} and set(targets) == {'super_clf'}
    assert inputs['super_data'].shape == (12, 32, 32, 1)


@pytest.mark.parametrize(
    'name,full,inference',
    [('convnet', 3128720, 3127946), ('nin', 1011600, 1010442), ('wrn', 1472000, 1471226)],
)
def test_two_headed_model_parameter_counts(name, full, inference):
    import networks
    from sesemi_base.compat import K

    K.clear_session()
    trunk = networks.get(name)((32, 32, 3))
    train, infer = build_models(trunk, (32, 32, 3), 10, True, 0.2)
    assert train.count_params() == full
    assert infer.count_params() == inference
    assert [t.name.split(':')[0].split('/')[0] for t in train.inputs] == ['self_data', 'super_data']


@pytest.mark.parametrize('convert', [False, True])
def test_replica_slices_put_together_are_the_single_device_step(convert):
    """Each replica's slice holds the images of the single-device step at its positions,
    augmented identically: per-image random keys, offsets drawn for the whole step."""
    rng = np.random.RandomState(0)
    x = rng.randint(0, 256, (40, 16, 16, 3)).astype(np.uint8)
    y = np.eye(10, dtype=np.float32)[np.arange(40) % 10]
    sampler = pipeline.BatchSampler(np.arange(20), np.arange(40), 4 * 6, 4, seed=2)
    options = {'convert': lambda t: t * 2.0 - 1.0} if convert else {}
    images = x if convert else x.astype(np.float32) / 255.0
    whole = take(pipeline.make_dataset(images, y, sampler, 2, True, first_step=3, **options), 2)
    halves = take(
        pipeline.make_dataset(
            images, y, sampler, 2, True, first_step=3, parts=(0, 1), n_parts=2, **options
        ),
        4,
    )
    second = take(
        pipeline.make_dataset(
            images, y, sampler, 2, True, first_step=3, parts=(1,), n_parts=2, **options
        ),
        1,
    )[0]
    for step, (inputs, targets) in enumerate(whole):
        for name, part in list(inputs.items()) + list(targets.items()):
            pieces = [halves[2 * step + k][name in targets][name] for k in (0, 1)]
            np.testing.assert_allclose(
                np.concatenate(pieces), part, rtol=0, atol=1e-6, err_msg=name
            )
    np.testing.assert_array_equal(second[0]['super_data'], halves[1][0]['super_data'])
    with pytest.raises(ValueError, match='cannot be cut into 3 equal parts'):
        pipeline.make_dataset(images, y, sampler, 2, True, n_parts=3)
