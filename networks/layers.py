"""Layer settings and building blocks shared by the backbones: the reference
networks all use he_normal kernels with L2 5e-4, and BatchNorm with momentum 0.99
and epsilon 1e-3 after every convolution, whose moving statistics are updated as
Keras 2.2.4 updates them, one accumulator per branch of a shared trunk (see
``BatchNormalization`` and ``ProxyBranch``). Under a data-parallel
strategy BatchNorm can normalise with the statistics of the whole step
(``global_batch_statistics``)."""

import contextlib
import threading
from typing import List, Optional

import numpy as np

from sesemi_base.compat import (
    K,
    constant_value,
    do_not_convert,
    keras,
    replica_local_variable,
    smart_cond,
    tf,
)

WEIGHT_DECAY = 5e-4
KERNEL_INIT = 'he_normal'
BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3
# Names under which each BatchNorm layer's debiasing state appears in checkpoints: the
# accumulator that writes the moving statistics (the labeled branch's), and the proxy branch's.
DEBIAS_STATE = 'zero_debias'
PROXY_STATE = 'proxy_zero_debias'
_GLOBAL_STATISTICS = [False]  # set while ``global_batch_statistics`` builds a network


@contextlib.contextmanager
def global_batch_statistics(enabled: bool = True):
    """BatchNorm layers made inside this block normalise, when trained by several
    replicas, with the mean and variance of the whole step (all replicas' images),
    and update their moving statistics with them; outside it, each replica uses
    its own slice's statistics, as Keras does."""
    saved = _GLOBAL_STATISTICS[0]
    _GLOBAL_STATISTICS[0] = enabled
    try:
        yield
    finally:
        _GLOBAL_STATISTICS[0] = saved


def scaled(channels: int, width: float) -> int:
    """A channel count multiplied by the ``--width`` factor (at least 1)."""
    return max(1, int(round(channels * width)))


def conv(
    x, filters: int, kernel_size: int, name: str, padding: str = 'same', use_bias: bool = True
):
    """An L2-regularised, he_normal-initialised 2-D convolution."""
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        padding=padding,
        use_bias=use_bias,
        kernel_initializer=KERNEL_INIT,
        kernel_regularizer=keras.regularizers.l2(WEIGHT_DECAY),
        name=name + '_conv',
    )(x)


class DebiasState(tf.Module):
    """What a zero-debiased moving average keeps besides its result: the number of
    updates and the biased averages of the batch means and variances (all saved by
    checkpoints).

    Args:
        channels: the number of normalised channels.
    """

    def __init__(self, channels: int):
        super().__init__()
        # One copy per replica, like Keras' moving statistics: each replica updates its own
        # (equal ones under global statistics); a checkpoint stores their mean.
        self.count = replica_local_variable(np.int64(0), 'count', average=False)
        self.biased_mean = replica_local_variable(np.zeros(channels, np.float32), 'biased_mean')
        self.biased_variance = replica_local_variable(
            np.zeros(channels, np.float32), 'biased_variance'
        )


class _Branch(threading.local):
    """Whether the calls being built belong to the self-supervised (proxy) branch; per
    thread, as a tf.distribute strategy builds each replica's step in its own thread."""

    proxy = False


_BRANCH = _Branch()


class ProxyBranch(keras.layers.Layer):
    """Applies a trunk for the self-supervised branch of a model that shares it with
    the labeled branch: its BatchNorm layers update a proxy accumulator of their own
    there, and never the moving statistics (see ``BatchNormalization``).

    Wrapping a trunk gives each of its BatchNorm layers that accumulator, saved by
    checkpoints under ``PROXY_STATE``. The trunk itself is unchanged: called
    directly, it serves the labeled branch and inference. A model must also call
    the trunk directly: that call, not this layer, makes the trunk's weights the
    model's.

    Args:
        trunk: the shared backbone.
    """

    def __init__(self, trunk, **kwargs):
        kwargs.setdefault('name', 'proxy_branch')
        super().__init__(**kwargs)
        # Not tracked: the model owns the trunk through its labeled branch, and TF 1.15's
        # Keras would list the trunk's weights twice (and train them twice).
        object.__setattr__(self, 'trunk', trunk)
        for layer in batchnorm_layers(trunk):
            if isinstance(layer, BatchNormalization):
                layer.add_proxy_state()

    @do_not_convert
    def call(self, inputs, training=None):  # pylint: disable=arguments-differ
        """The trunk applied to ``inputs``, its BatchNorm calls marked as the proxy branch's."""
        saved = _BRANCH.proxy
        _BRANCH.proxy = True
        try:
            return self.trunk(inputs, training=training)
        finally:
            _BRANCH.proxy = saved

    def compute_output_shape(self, input_shape):
        """The trunk's output shape."""
        return self.trunk.compute_output_shape(input_shape)


class BatchNormalization(keras.layers.BatchNormalization):
    """Keras' BatchNormalization with the moving statistics of Keras 2.2.4, one
    accumulator per branch.

    Keras 2.2.4 on TensorFlow updates the moving mean and variance with
    ``assign_moving_average(var, batch_stat, momentum, zero_debias=True)``: with
    d = momentum, after t training calls

        biased_t = d·biased_{t−1} + (1 − d)·x_t,  biased_0 = 0
        moving_t = biased_t / (1 − d^t)

    so the 0 / 1 initial values carry no weight, while tf.keras averages from them.
    The variance x_t is the one Keras 2.2.4 fed in: the fused kernel's unbiased
    batch variance times n / (n − 1 − epsilon), n values per channel (that layer
    applied its own Bessel factor on top of the kernel's).

    Each call of a layer there gets its own accumulator (biased_t and t): a trunk
    shared by the labeled and the proxy branch keeps two averages, and whichever
    update ran last in a step wrote the moving statistics. Here the labeled
    branch's average always does: calls made through ``ProxyBranch`` update the
    proxy accumulator only, so inference uses the labeled branch's statistics.

    The forward pass is Keras' own fused one; only the update differs. The counts
    and the biased averages live in ``DebiasState`` objects that checkpoints save
    (``DEBIAS_STATE``, ``PROXY_STATE``) but that are not among the layer's
    weights, so parameter counts and model files are those of Keras' layer, and
    stock Keras loads a saved model as its own BatchNormalization (the class name
    is the same for that reason). Inference reads only the moving statistics.

    Made inside ``global_batch_statistics`` and trained by several replicas, the
    layer normalises with the whole step's statistics (two all-reduces: the
    per-channel sums and counts, then the squared deviations from the global
    mean, which keeps the variance as accurate as the fused kernel's) and feeds
    those to the same updates, so the replicas' copies of the state stay equal and
    the run computes what one device computes on the whole step.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Not in get_config: a training matter, and stock Keras must load the model files.
        self.global_statistics = _GLOBAL_STATISTICS[0]

    def build(self, input_shape):
        """Keras' variables, then the labeled branch's accumulator."""
        super().build(input_shape)
        if not self.fused:
            raise ValueError('%s normalises NHWC feature maps on their last axis only' % self.name)
        self._set_state('debias', DEBIAS_STATE)
        object.__setattr__(self, 'proxy_debias', None)

    def _set_state(self, attribute: str, name: str) -> None:
        state = DebiasState(int(self.moving_mean.shape[0]))
        # Set past Keras' attribute tracking, which would count the state as weights.
        object.__setattr__(self, attribute, state)
        self._track_trackable(state, name=name)  # pylint: disable=protected-access

    def add_proxy_state(self) -> None:
        """Gives the layer the accumulator of the proxy branch (``ProxyBranch`` does)."""
        if self.proxy_debias is None:
            self._set_state('proxy_debias', PROXY_STATE)

    @do_not_convert
    def call(self, inputs, training=None):  # pylint: disable=arguments-differ
        """Keras' fused normalisation; in training, the branch's zero-debiased update."""
        training = self._get_training_value(training)  # pylint: disable=protected-access
        inference = super().call
        if constant_value(training) is False:
            return inference(inputs, training=False)
        proxy = _BRANCH.proxy  # read now: TF 1.15 builds the update later, outside this call
        if proxy and self.proxy_debias is None:
            raise ValueError(
                '%s is called for a proxy branch without its accumulator; apply '
                'the trunk through ProxyBranch' % self.name
            )

        gamma = self.gamma if self.scale else tf.ones_like(self.moving_mean)
        beta = self.beta if self.center else tf.zeros_like(self.moving_mean)
        local_n = tf.size(inputs) // tf.shape(inputs)[-1]
        replicas = tf.distribute.get_replica_context()

        def train():
            if self.global_statistics and replicas and replicas.num_replicas_in_sync > 1:
                return _global_batch_norm(inputs, gamma, beta, self.epsilon, replicas)
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, epsilon=self.epsilon, is_training=True
            )
            return outputs, mean, variance, tf.cast(local_n, tf.float32)

        def infer():  # only built where ``training`` is a tensor (TF 1.15's learning phase)
            return (
                inference(inputs, training=False),
                tf.identity(self.moving_mean),
                tf.identity(self.moving_variance),
                tf.cast(local_n, tf.float32),
            )

        outputs, mean, variance, n = smart_cond(training, train, infer)
        self.add_update(
            lambda: smart_cond(
                training,
                lambda: self._update(mean, variance, n, proxy),
                lambda: tf.constant(0, tf.int64),
            )
        )
        return outputs

    def _update(self, mean, variance, n, proxy: bool):
        """One zero-debiased moving-average step of the branch's accumulator, written
        as TensorFlow's ``assign_moving_average`` writes it; the labeled branch's also
        writes the moving statistics. Returns the new count."""
        state = self.proxy_debias if proxy else self.debias
        variance = fed_variance(variance, n, self.epsilon)
        decay = tf.constant(1.0 - self.momentum, tf.float32)
        count = state.count.assign_add(1)
        bias = 1.0 - tf.pow(1.0 - decay, tf.cast(count, tf.float32))
        updates = []
        for biased, moving, value in (
            (state.biased_mean, self.moving_mean, mean),
            (state.biased_variance, self.moving_variance, variance),
        ):
            average = biased.assign_sub((biased - value) * decay)
            updates.append(average if proxy else moving.assign(average / bias))
        with tf.control_dependencies(updates):
            return tf.identity(count)


def fed_variance(variance, n, epsilon: float):
    """The variance Keras 2.2.4 fed to the moving average: the unbiased batch
    ``variance`` (n values per channel) times n / (n − 1 − epsilon)."""
    return variance * (n / (n - (1.0 + epsilon)))


def debiased_average(state: DebiasState, momentum: float = BN_MOMENTUM):
    """(mean, variance): the zero-debiased averages an accumulator holds,
    biased / (1 − momentum^count), as numpy arrays."""
    count = int(K.get_value(state.count))
    correction = 1.0 - momentum**count
    return (
        K.get_value(state.biased_mean) / correction,
        K.get_value(state.biased_variance) / correction,
    )


def _global_batch_norm(inputs, gamma, beta, epsilon: float, replicas):
    """Batch normalisation of NHWC ``inputs`` with the statistics of every replica's
    batch (``replicas``: the replica context).

    Returns:
        (outputs, global mean, global variance with Bessel's correction, as the
        fused kernel returns it, number of values per channel in all replicas).
    """
    x = tf.cast(inputs, tf.float32)
    axes = [0, 1, 2]
    local_n = tf.cast(tf.size(x) // tf.shape(x)[-1], tf.float32)
    sums = replicas.all_reduce(
        tf.distribute.ReduceOp.SUM, tf.concat([tf.reduce_sum(x, axes), [local_n]], 0)
    )
    n = sums[-1]
    mean = sums[:-1] / n
    squares = replicas.all_reduce(
        tf.distribute.ReduceOp.SUM, tf.reduce_sum(tf.square(x - mean), axes)
    )
    variance = squares / n
    outputs = tf.nn.batch_normalization(x, mean, variance, beta, gamma, epsilon)
    return tf.cast(outputs, inputs.dtype), mean, variance * (n / (n - 1.0)), n


def batchnorm_layers(model) -> List[keras.layers.BatchNormalization]:
    """The BatchNorm layers of ``model`` and of the models nested in it (once each)."""
    found = []  # type: List[keras.layers.BatchNormalization]
    for layer in model.layers:
        nested = batchnorm_layers(layer) if isinstance(layer, keras.Model) else [layer]
        found += [
            candidate
            for candidate in nested
            if isinstance(candidate, keras.layers.BatchNormalization)
            and all(candidate is not seen for seen in found)
        ]
    return found


def bn_act(x, name: str, leaky_alpha: Optional[float] = None):
    """BatchNorm then ReLU, or LeakyReLU(leaky_alpha) when given."""
    x = BatchNormalization(axis=-1, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name + '_bn')(x)
    if leaky_alpha is None:
        return keras.layers.Activation('relu', name=name + '_relu')(x)
    return keras.layers.LeakyReLU(alpha=leaky_alpha, name=name + '_lrelu')(x)


def pool_dropout(x, dropout: float, name: str):
    """2×2 max-pooling with stride 2, then dropout when ``dropout`` > 0."""
    x = keras.layers.MaxPooling2D(2, strides=2, padding='valid', name=name)(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name=name + '_dropout')(x)
    return x
