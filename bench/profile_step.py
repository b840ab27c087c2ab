"""Per-op profile of one SESEMI training step, next to this CPU's measured peak.

Builds the two-headed model as the entry does (asl, batch 16: 96 labeled images
and 96 proxy views), then times the compiled Keras train function on one fixed
batch and collects TensorFlow's per-node step statistics (RunMetadata: on TF 2
through the eager context, on TF 1.15 through the session). Prints the step time,
the time per op type (summed over both cores' threads, so it can exceed the wall
time), the step's convolution/matmul FLOPs and the achieved GFLOP/s, and the
GFLOP/s of one large convolution measured in the same run as the peak to compare
with.

    source test/malloc.sh
    .venv/bin/python bench/profile_step.py --width 1.0 [--precision mixed] [--xla on|off]
        [--network convnet] [--steps 3] [--top 15]
"""

import argparse
import collections
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# TensorFlow and the model code are imported by the functions that use them, so that importing
# this script for its flags (make_parser, read by tests/test_docs.py) does not load TensorFlow.

SHAPE, CLASSES, BATCH = (32, 32, 3), 10, 16


def conv_flops(model, images_per_branch: int) -> float:
    """Multiply-adds ×2 of every Conv2D/Dense in one training step: forward once per
    branch, backward twice (input and weight gradients; the first layer's input
    gradient is not needed but counted, as profilers do)."""
    from sesemi_base.compat import TF1, keras

    total = 0.0
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            out = layer.output_shape if TF1 else layer.output.shape
            kh, kw = layer.kernel_size
            cin = int(layer.input.shape[-1])
            total += 2.0 * int(np.prod([int(d) for d in out[1:]])) * kh * kw * cin
        elif isinstance(layer, keras.layers.Dense):
            total += 2.0 * int(layer.input.shape[-1]) * layer.units
    branches = 2
    return 3 * total * images_per_branch * branches


def _all_layers(model):
    from sesemi_base.compat import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer


def peak_conv_gflops(dtype, repeats: int = 5) -> float:
    """GFLOP/s of a 3×3, 128→128-channel convolution on 96 32×32 images (the
    shape of ConvNet-13's first block), the best of ``repeats``."""
    from sesemi_base.compat import TF1, tf

    x = tf.random.normal([96, 32, 32, 128], dtype=tf.float32)
    w = tf.random.normal([3, 3, 128, 128], dtype=tf.float32)
    x, w = tf.cast(x, dtype), tf.cast(w, dtype)
    flops = 2.0 * 96 * 32 * 32 * 128 * 128 * 9
    if TF1:
        y = tf.nn.conv2d(x, w, 1, 'SAME')
        with tf.compat.v1.Session() as sess:
            sess.run(y.op)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                sess.run(y.op)
                times.append(time.perf_counter() - start)
    else:
        conv = tf.function(lambda a, b: tf.nn.conv2d(a, b, 1, 'SAME'))
        conv(x, w).numpy()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            conv(x, w).numpy()
            times.append(time.perf_counter() - start)
    return flops / min(times) / 1e9


def build(args):
    import networks
    from sesemi_base.compat import TF1
    from sesemi_tf import device
    from sesemi_tf.config import RunConfig
    from sesemi_tf.model import build_models, compile_model, lr_schedule

    mode = 'allow_mix_precision' if args.precision == 'mixed' else ''
    precision = device.configure(RunConfig(device='cpu', precision_mode=mode)).precision
    trunk = networks.get(args.network)(SHAPE, 0.0, args.width)
    model, _ = build_models(trunk, SHAPE, CLASSES, True, 0.2)
    kwargs = {}
    if not TF1 and args.xla == 'on':
        kwargs['jit_compile'] = True
    compile_model(model, lr_schedule(0.05, 1000, 0.5), True, **kwargs)
    return model, precision


def batch():
    rng = np.random.RandomState(0)
    n = BATCH * 6
    inputs = {
        'self_data': rng.randn(n, *SHAPE).astype(np.float32),
        'super_data': rng.randn(n, *SHAPE).astype(np.float32),
    }
    targets = {
        'self_clf': np.eye(6, dtype=np.float32)[rng.randint(0, 6, n)],
        'super_clf': np.eye(CLASSES, dtype=np.float32)[rng.randint(0, CLASSES, n)],
    }
    return inputs, targets


def time_steps(model, steps: int):
    """Median wall time of ``steps`` train steps after two warm-up steps."""
    inputs, targets = batch()
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        model.train_on_batch(inputs, targets)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def op_times(model, folder: str):
    """{op type: milliseconds summed over threads} of one traced train step.

    TF 2: the profiler's trace (XSpace), whose op events are named
    ``node name:op type``. TF 1.15: the session's full-trace step statistics.
    """
    from sesemi_base.compat import TF1, tf

    inputs, targets = batch()
    times = collections.Counter()
    if TF1:
        fn = model.train_function
        fn.run_options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
        fn.run_metadata = tf.compat.v1.RunMetadata()
        fn._callable_fn = None  # pylint: disable=protected-access
        model.train_on_batch(inputs, targets)
        for dev in fn.run_metadata.step_stats.dev_stats:
            for node in dev.node_stats:
                label = node.timeline_label.split(' = ')[-1]
                if 'device=' in label:  # the call of the whole step, not an op in it
                    continue
                times[label.split('(')[0] or node.node_name] += node.all_end_rel_micros / 1000
        return times
    import glob

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    tf.profiler.experimental.start(folder)
    model.train_on_batch(inputs, targets)
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    with open(
        sorted(glob.glob(os.path.join(folder, '**', '*.xplane.pb'), recursive=True))[-1], 'rb'
    ) as f:
        space.ParseFromString(f.read())
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ':' in name and '/' in name:  # an op: "scope/node:Type"
                    times[name.rsplit(':', 1)[1]] += event.duration_ps / 1e9
    return times


def make_parser() -> argparse.ArgumentParser:
    """The script's flags, built apart from main() so that tests/test_docs.py can check
    the command lines the documentation quotes against them."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--network', default='convnet')
    parser.add_argument('--width', type=float, default=1.0)
    parser.add_argument('--precision', default='float32', choices=('float32', 'mixed'))
    parser.add_argument('--xla', default='off', choices=('on', 'off'))
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--top', type=int, default=15)
    return parser


def main():
    args = make_parser().parse_args()
    from sesemi_base.compat import TF1, tf

    model, precision = build(args)
    step = time_steps(model, args.steps)
    flops = conv_flops(model, BATCH * 6)
    print(
        '%s width %g, %s, XLA %s, TensorFlow %s'
        % (args.network, args.width, precision, args.xla, tf.__version__)
    )
    print(
        'step %.1f ms; conv+dense %.1f GFLOP per step -> %.0f GFLOP/s'
        % (1000 * step, flops / 1e9, flops / step / 1e9)
    )
    import tempfile

    by_type = op_times(model, tempfile.mkdtemp(prefix='sesemi_profile_'))
    total = sum(by_type.values())
    print('op time summed over threads: %.1f ms' % total)
    for kind, ms in by_type.most_common(args.top):
        print('  %-40s %8.1f ms  %5.1f %%' % (kind[:40], ms, 100 * ms / total))
    for dtype in ['float32', 'bfloat16'] if not TF1 else ['float32']:
        print(
            'peak: 3x3 conv 128->128 on 96x32x32 in %s: %.0f GFLOP/s'
            % (dtype, peak_conv_gflops(tf.as_dtype(dtype)))
        )


if __name__ == '__main__':
    main()
