"""Which average a shared trunk's BatchNorm keeps: after K steps in which the labeled and the
proxy branch see inputs of clearly different statistics (N(3, 2) and N(−1, 0.5)), the moving
mean against the labeled branch's zero-debiased average, the proxy branch's, and the one
accumulator fed by both (proxy, then labeled, each step) that the project kept before.

    .venv/bin/python bench/branch_statistics.py --steps 24
    .venv-tf1/bin/python bench/branch_statistics.py --steps 24

Prints the maximum over channels of |a − b| / |b| for each pair, and the TensorFlow version.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DECAY, EPSILON, SHAPE = 0.99, 1e-3, (3, 3, 3)


def debiased(sequence):
    """The zero-debiased moving mean after BatchNorm calls that saw ``sequence``."""
    biased = 0.0
    for x in sequence:
        biased = DECAY * biased + (1 - DECAY) * x.reshape(-1, SHAPE[-1]).mean(axis=0)
    return biased / (1 - DECAY ** len(sequence))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--steps', type=int, default=24, help='training steps K (default 24)')
    args = parser.parse_args()
    from networks import layers
    from sesemi_base.compat import K, keras, tf

    inputs = keras.layers.Input(SHAPE)
    trunk = keras.Model(
        inputs, layers.BatchNormalization(momentum=DECAY, epsilon=EPSILON, name='bn')(inputs)
    )
    labeled_in, proxy_in = keras.layers.Input(SHAPE), keras.layers.Input(SHAPE)
    model = keras.Model(
        [labeled_in, proxy_in], [trunk(labeled_in), layers.ProxyBranch(trunk)(proxy_in)]
    )
    model.compile(keras.optimizers.SGD(0.0), 'mse')
    rng = np.random.RandomState(0)
    steps = [
        (
            rng.normal(3.0, 2.0, (2,) + SHAPE).astype(np.float32),
            rng.normal(-1.0, 0.5, (2,) + SHAPE).astype(np.float32),
        )
        for _ in range(args.steps)
    ]
    for labeled, proxy in steps:
        model.train_on_batch([labeled, proxy], [np.zeros_like(labeled)] * 2)

    moving = K.get_value(trunk.get_layer('bn').moving_mean).astype(np.float64)
    references = {
        'labeled branch average': debiased([s[0] for s in steps]),
        'proxy branch average': debiased([s[1] for s in steps]),
        'one accumulator (both)': debiased([x for s in steps for x in (s[1], s[0])]),
    }
    print(
        'TensorFlow %s, %d steps: moving mean %s'
        % (tf.__version__, args.steps, np.array2string(moving, precision=4))
    )
    for name, value in references.items():
        print(
            '  relative difference to the %-24s %.3g'
            % (name + ':', float(np.max(np.abs(moving - value) / np.abs(value))))
        )


if __name__ == '__main__':
    main()
