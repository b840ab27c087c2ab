"""The two-headed model on a shared trunk, its loss and optimizer, and the
learning-rate schedule, as the reference builds them.
"""

from typing import Callable, Optional, Tuple

from networks.layers import ProxyBranch
from sesemi_base.compat import keras
from utils import PROXY_LABELS, WEIGHT_DECAY


def lr_schedule(base_lr: float, max_iter: int, power: float):
    """base_lr · (1 − iteration/max_iter)^power, decaying to 0 at max_iter."""
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
