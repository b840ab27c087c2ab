"""Training-step time of SESEMI's ConvNet-13 (width 1.0) on this machine, in
float32 and, under TF 2.x, in mixed_bfloat16 (what --precision_mode=
allow_mix_precision selects on CPU), at the default batch of 16 pool images:
96 labeled images plus 96 proxy views per step. Prints the median ms/step of
each and, as the last line, their ratio (TF 1.15: why there is none).

    .venv/bin/python bench/step.py [--steps 5] [--warmup 2]
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import device  # noqa: E402
import networks  # noqa: E402
import utils  # noqa: E402
from compat import TF1, K, tf  # noqa: E402

SHAPE, CLASSES = (32, 32, 3), 10


def device_config(precision_mode: str) -> dict:
    """The entry's configuration keys that device.configure reads, on CPU."""
    return {'device': 'cpu', 'precision_mode': precision_mode, 'over_dump': False,
            'dry_run': False, 'deterministic': False}


def ms_per_step(precision_mode: str, batch_size: int, steps: int, warmup: int):
    """Builds and compiles the model as the entry does, then times train steps on
    one fixed random batch. Returns (precision in effect, median ms/step)."""
    K.clear_session()
    precision = device.configure(device_config(precision_mode))['precision']
    trunk = networks.get('convnet')(SHAPE, 0.0, 1.0)
    model, _ = utils.build_models(trunk, SHAPE, CLASSES, True, 0.2)
    utils.compile_model(model, utils.lr_schedule(0.05, 1000, 0.5), True)
    rng = np.random.RandomState(0)
    n = batch_size * 6  # labeled images; the pool's batch_size images give 6 views each
    inputs = {'self_data': rng.randn(n, *SHAPE).astype(np.float32),
              'super_data': rng.randn(n, *SHAPE).astype(np.float32)}
    targets = {'self_clf': np.eye(6, dtype=np.float32)[rng.randint(0, 6, n)],
               'super_clf': np.eye(CLASSES, dtype=np.float32)[rng.randint(0, CLASSES, n)]}
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        model.train_on_batch(inputs, targets)
        if step >= warmup:
            times.append(1000 * (time.perf_counter() - start))
    return precision, statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--steps', type=int, default=5, help='timed steps per precision')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps first (tracing)')
    parser.add_argument('--batch_size', type=int, default=16, help='pool images per step')
    args = parser.parse_args()
    print('TensorFlow %s, %d CPU cores, ConvNet-13 width 1.0, %d + %d images per step'
          % (tf.__version__, os.cpu_count(), args.batch_size * 6, args.batch_size * 6), flush=True)
    precision, float32_ms = ms_per_step('', args.batch_size, args.steps, args.warmup)
    print('%-15s %8.0f ms/step (median of %d)' % (precision, float32_ms, args.steps), flush=True)
    if device.resolve_precision('cpu', 'allow_mix_precision', TF1) == 'float32':
        print('no mixed_bfloat16 figure: TensorFlow 1.15 has no bfloat16 Keras policy (its mixed '
              'precision is the float16 graph rewrite, for GPUs only)')
        return
    # Second: the mixed policy, once set, stays for the process.
    precision, mixed_ms = ms_per_step('allow_mix_precision', args.batch_size, args.steps, args.warmup)
    print('%-15s %8.0f ms/step (median of %d)' % (precision, mixed_ms, args.steps))
    print('mixed_bfloat16 / float32 step time: %.2fx' % (mixed_ms / float32_ms))

if __name__ == '__main__':
    main()
