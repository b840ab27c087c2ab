"""Wide Residual Network WRN-28-2, Zagoruyko & Komodakis, "Wide Residual
Networks" (BMVC 2016), pre-activation form, in the variant that downsamples with
max-pooling after the widening convolution of stages 2 and 3 instead of with
strided convolutions. Convolutions have no bias: each one feeds a BatchNorm
(directly or after the residual addition).

Only the trunk is built here (no global pooling, no classifier): SESEMI attaches
its own supervised and self-supervised heads on top of it.
"""

from typing import Tuple

from networks.layers import bn_act, conv, scaled
from sesemi_base.compat import keras

DEPTH = 28
WIDEN = 2
BASE_CHANNELS = 16
STAGE_CHANNELS = (16 * WIDEN, 32 * WIDEN, 64 * WIDEN)
# (depth - 4) / 6 = 4 basic blocks per stage; the widening ``expand`` unit is the
# first of them, so 3 identity blocks follow it.
BLOCKS_PER_STAGE = (DEPTH - 4) // 6 - 1


def expand(x, channels: int, name: str):
    """Widening unit: Conv3×3 → BN → ReLU → Conv3×3, plus a 1×1 projection shortcut.

    Args:
        x: input tensor, NHWC (already batch-normalised and activated).
        channels: number of output channels.
        name: prefix for the layer names.

    Returns:
        The sum of the residual branch and the projected shortcut.
    """
    shortcut = conv(x, channels, 1, name + '_shortcut', use_bias=False)
    y = conv(x, channels, 3, name + '_1', use_bias=False)
    y = bn_act(y, name=name + '_1')
    y = conv(y, channels, 3, name + '_2', use_bias=False)
    return keras.layers.Add(name=name + '_add')([y, shortcut])


def residual_block(x, channels: int, dropout: float, name: str):
    """Pre-activation basic block: x + Conv(ReLU(BN(Dropout(Conv(ReLU(BN(x))))))).

    Args:
        x: input tensor with ``channels`` channels.
        channels: number of channels of both convolutions.
        dropout: dropout rate between the two convolutions; 0 adds no layer.
        name: prefix for the layer names.

    Returns:
        The block output, same shape as ``x``.
    """
    y = bn_act(x, name=name + '_1')
    y = conv(y, channels, 3, name + '_1', use_bias=False)
    if dropout > 0:
        y = keras.layers.Dropout(dropout, name=name + '_dropout')(y)
    y = bn_act(y, name=name + '_2')
    y = conv(y, channels, 3, name + '_2', use_bias=False)
    return keras.layers.Add(name=name + '_add')([x, y])


def create_network(
    input_shape: Tuple[int, int, int], dropout: float = 0.0, width: float = 1.0
) -> keras.Model:
    """Builds the WRN-28-2 trunk.

    Args:
        input_shape: (height, width, channels) of one image.
        dropout: dropout rate inside every residual block; 0 adds no Dropout
            layers.
        width: multiplier applied to every convolution's channel count.

    Returns:
        A functional keras.Model named 'wrn_trunk'; a 32×32 input gives an
        8×8×128 output (at width 1).
    """
    inputs = keras.layers.Input(shape=tuple(input_shape), name='wrn_input')
    x = conv(inputs, scaled(BASE_CHANNELS, width), 3, 'init', use_bias=False)
    x = bn_act(x, name='init')
    for s, stage_channels in enumerate(STAGE_CHANNELS, start=1):
        channels = scaled(stage_channels, width)
        x = expand(x, channels, name='stage%d_expand' % s)
        if s > 1:
            # Downsampling by pooling after widening, in place of a strided conv.
            x = keras.layers.MaxPooling2D(2, strides=2, padding='valid', name='stage%d_pool' % s)(x)
        for b in range(1, BLOCKS_PER_STAGE + 1):
            x = residual_block(x, channels, dropout, name='stage%d_block%d' % (s, b))
        # Pre-activation blocks leave their output un-normalised; this BN-ReLU
        # feeds the next stage's expand, or ends the trunk after the last stage.
        x = bn_act(x, name='stage%d_post' % s)
    return keras.Model(inputs, x, name='wrn_trunk')
