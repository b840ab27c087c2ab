"""Training-step time through the entry's own ``model.fit``, callbacks included,
for this checkout and for an earlier commit in the same invocation.

Each case is one child process that runs ``train_evaluate_asl2.run`` on a
synthetic CIFAR-10 folder in asl mode (batch 16: 96 labeled images plus 96 proxy
views per step) and reads the ms/step of the epochs after the first (the first
one traces and compiles) from metrics.jsonl. Its input is either the real
pipeline or one fixed batch (``Dataset.from_tensors(batch).repeat()``), to show
whether the pipeline holds the step back. The earlier commit runs from a
``git worktree``, with its own defaults. The last line is the new/old float32
step-time ratio of ConvNet-13 at width 1.0.

    source test/malloc.sh
    .venv/bin/python bench/step.py [--old REV] [--models convnet:1,convnet:0.125]
        [--precisions float32,mixed] [--feeds real,fixed] [--rounds N] [--variant=--xla=on]

Run it on an idle machine: the cases are timed one after another, so load from
elsewhere shows up as noise in the ratios.
"""

import argparse
import json
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEFORE_SPEED_WORK = '42c2b7b'  # the last commit before the training-step work


# ------------------------------------------------------------------ child


def fixed_batch_dataset(dataset):
    """A stream that repeats the first element of ``dataset`` (in-memory copy)."""
    try:  # the layout with the sesemi_base package, or the older one
        from sesemi_base.compat import TF1, K, tf
    except ImportError:
        from compat import TF1, K, tf

    if TF1:
        element = K.get_session().run(tf.compat.v1.data.make_one_shot_iterator(dataset).get_next())
    else:
        element = tf.nest.map_structure(lambda t: t.numpy(), next(iter(dataset)))
    return tf.data.Dataset.from_tensors(element).repeat()


def child(args) -> None:
    """Runs one case in this process with the code of ``args.tree`` and prints
    its figures as one JSON line."""
    sys.path.insert(0, args.tree)
    os.chdir(args.tree)
    import train_evaluate_asl2 as entry

    if args.feed == 'fixed':
        try:  # the layout with the sesemi_tf package, or the older one
            from sesemi_tf.training import Training
        except ImportError:
            Training = entry.Training  # noqa: N806
        real = Training.dataset
        Training.dataset = lambda self, first_step=0: fixed_batch_dataset(real(self, first_step))
    result = os.path.join(args.work, 'run')
    argv = [
        'step.py',
        '--data=cifar10',
        '--dataset=' + args.data,
        '--mode=asl',
        '--network=' + args.network,
        '--width=%g' % args.width,
        '--labels=%d' % args.labels,
        '--batch_size=16',
        '--epochs=1000',
        '--max_steps=%d' % args.max_steps,
        '--result=' + result,
        '--precision_mode=' + args.precision_mode,
    ] + args.extra
    start = time.time()
    code = entry.run(argv)
    with open(os.path.join(result, 'metrics.jsonl')) as f:
        rows = [json.loads(line) for line in f]
    with open(os.path.join(result, 'args.json')) as f:
        saved = json.load(f)
    timed = [r['ms_per_step'] for r in rows[1:]]
    print(
        'RESULT '
        + json.dumps(
            {
                'code': code,
                'ms_per_step': statistics.median(timed),
                'epochs_timed': len(timed),
                'first_epoch_ms': rows[0]['ms_per_step'],
                'precision': saved.get('precision'),
                'xla': saved.get('xla'),
                'steps_per_execution': saved.get('steps_per_execution'),
                'tf': saved.get('tf_version'),
                'wall_s': time.time() - start,
            }
        ),
        flush=True,
    )


# ------------------------------------------------------------------ parent


def write_cifar10(folder: str, per_class: int) -> None:
    """Random CIFAR-10 pickles (``per_class`` training images of each class)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(0)
    for name, count in [('data_batch_%d' % i, per_class // 5) for i in range(1, 6)] + [
        ('test_batch', 10)
    ]:
        labels = np.repeat(np.arange(10), count)
        data = rng.randint(0, 256, (len(labels), 3072)).astype(np.uint8)
        with open(os.path.join(folder, name), 'wb') as f:
            pickle.dump({'data': data, 'labels': labels.tolist()}, f, protocol=2)


def cpu_name() -> str:
    """The CPU model and whether it has AVX-512 BF16 instructions (x86 Linux)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                key, _, value = line.partition(':')
                if key.strip() == 'model name':
                    name = value.strip()
                elif key.strip() == 'flags':
                    flags = set(value.split())
    except OSError:
        pass
    extras = [f for f in ('avx512f', 'avx512_bf16', 'amx_bf16') if f in flags]
    return '%s (%d cores%s)' % (name, os.cpu_count(), ', ' + ' '.join(extras) if extras else '')


def run_case(python: str, tree: str, work: str, data: str, case: dict) -> dict:
    cmd = [
        python,
        os.path.abspath(__file__),
        '--child',
        '--tree',
        tree,
        '--work',
        work,
        '--data',
        data,
        '--network',
        case['network'],
        '--width',
        str(case['width']),
        '--labels',
        str(case['labels']),
        '--max_steps',
        str(case['max_steps']),
        '--feed',
        case['feed'],
        '--precision_mode',
        case['precision_mode'],
    ]
    for extra in case['extra']:
        cmd += ['--extra=' + extra]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith('RESULT '):
            return json.loads(line[len('RESULT ') :])
    raise RuntimeError('case %s failed:\n%s' % (case, proc.stderr[-3000:]))


def cases(args):
    """(tree, case) of every measurement: rounds of new and old side by side."""
    for _ in range(args.rounds):
        for network, width in args.models:
            # Steps per epoch = labels / 16; the first epoch is not timed.
            labels = 80 if width >= 0.5 else 320
            for precision_mode in args.precisions:

                def case(
                    feed,
                    extra=(),
                    network=network,
                    width=width,
                    labels=labels,
                    precision_mode=precision_mode,
                ):
                    return {
                        'network': network,
                        'width': width,
                        'labels': labels,
                        'max_steps': 3 * labels // 16,
                        'feed': feed,
                        'precision_mode': precision_mode,
                        'extra': list(extra),
                    }

                for feed in args.feeds.split(','):
                    for tree in ('new', 'old'):
                        if tree == 'old' and feed == 'fixed' and not args.old_fixed:
                            continue
                        yield tree, case(feed)
                for variant in args.variant:
                    yield 'new', case('real', variant.split())


def parse_models(text: str):
    models = []
    for item in text.split(','):
        name, _, width = item.partition(':')
        models.append((name, float(width or 1.0)))
    return models


def make_parser() -> argparse.ArgumentParser:
    """The script's flags, built apart from main() so that tests/test_docs.py can check
    the command lines the documentation quotes against them."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--old', default=BEFORE_SPEED_WORK, help='commit to compare with')
    parser.add_argument(
        '--models',
        default='convnet:1,convnet:0.125,nin:1,wrn:1',
        help='network:width pairs, comma-separated',
    )
    parser.add_argument(
        '--precisions',
        default='float32,mixed',
        help='float32 and/or mixed (--precision_mode=allow_mix_precision)',
    )
    parser.add_argument(
        '--feeds',
        default='real,fixed',
        help='real (the input pipeline) and/or fixed (one repeated batch)',
    )
    parser.add_argument(
        '--old_fixed', action='store_true', help='also time the old code on a fixed batch'
    )
    parser.add_argument('--rounds', type=int, default=1, help='repeat every case this often')
    parser.add_argument(
        '--variant',
        action='append',
        default=[],
        help='also time the new code with these extra flags (e.g. --xla=on); repeatable',
    )
    parser.add_argument('--python', default=sys.executable, help='interpreter of the children')
    parser.add_argument('--json', help='also write every figure to this file')
    # Child mode.
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--tree', default=HERE, help=argparse.SUPPRESS)
    parser.add_argument('--work', help=argparse.SUPPRESS)
    parser.add_argument('--data', help=argparse.SUPPRESS)
    parser.add_argument('--network', help=argparse.SUPPRESS)
    parser.add_argument('--width', type=float, help=argparse.SUPPRESS)
    parser.add_argument('--labels', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--max_steps', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--feed', help=argparse.SUPPRESS)
    parser.add_argument('--precision_mode', default='', help=argparse.SUPPRESS)
    parser.add_argument('--extra', action='append', default=[], help=argparse.SUPPRESS)
    return parser


def main():
    args = make_parser().parse_args()
    if args.child:
        child(args)
        return
    args.models = parse_models(args.models)
    args.precisions = [
        {'float32': '', 'mixed': 'allow_mix_precision'}[p] for p in args.precisions.split(',')
    ]

    scratch = tempfile.mkdtemp(prefix='sesemi_step_')
    old_tree = os.path.join(scratch, 'old')
    subprocess.run(
        ['git', '-C', HERE, 'worktree', 'add', '--detach', old_tree, args.old],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        data = os.path.join(scratch, 'cifar10')
        write_cifar10(data, per_class=100)
        version = subprocess.run(
            [
                args.python,
                '-c',
                'import sys; sys.path.insert(0, %r); '
                'from sesemi_base.compat import tf; print(tf.__version__)' % HERE,
            ],
            stdout=subprocess.PIPE,
            text=True,
        ).stdout.split()[-1]
        malloc = 'tcmalloc' if 'tcmalloc' in os.environ.get('LD_PRELOAD', '') else 'glibc malloc'
        print(
            'CPU: %s\nTensorFlow %s, %s; new = this checkout, old = %s; asl, batch 16 '
            '(96 labeled + 96 proxy images per step); ms/step = median over the epochs after '
            'the first' % (cpu_name(), version, malloc, args.old),
            flush=True,
        )
        figures = []
        for tree, case in cases(args):
            fig = run_case(
                args.python,
                HERE if tree == 'new' else old_tree,
                os.path.join(scratch, 'work'),
                data,
                case,
            )
            fig.update(case, tree=tree + ''.join(' ' + e for e in case['extra']))
            figures.append(fig)
            print(
                '%-13s %-7s w%-5g %-15s %-5s %9.1f ms/step  (first epoch %.0f; xla %s, '
                'steps/execution %s)'
                % (
                    tree,
                    case['network'],
                    case['width'],
                    fig['precision'],
                    case['feed'],
                    fig['ms_per_step'],
                    fig['first_epoch_ms'],
                    fig['xla'],
                    fig['steps_per_execution'],
                ),
                flush=True,
            )
        report(figures, args.variant)
        if args.json:
            with open(args.json, 'w') as f:
                json.dump(figures, f, indent=1)
    finally:
        subprocess.run(
            ['git', '-C', HERE, 'worktree', 'remove', '--force', old_tree],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        shutil.rmtree(scratch, ignore_errors=True)


def report(figures, variants) -> None:
    """Prints the ratios: real/fixed feed, and against the old float32 step."""

    def find(tree, network, width, precision, feed='real'):
        """The median ms/step over the rounds of one case, or None."""
        found = [
            fig['ms_per_step']
            for fig in figures
            if (fig['tree'], fig['network'], fig['width'], fig['precision'], fig['feed'])
            == (tree, network, width, precision, feed)
        ]
        return statistics.median(found) if found else None

    print('\nratios of the medians over the rounds:')
    keys = sorted(
        {(f['network'], f['width'], f['precision']) for f in figures if f['tree'] == 'new'}
    )
    for network, width, precision in keys:
        real, fixed = (
            find('new', network, width, precision),
            find('new', network, width, precision, 'fixed'),
        )
        old32 = find('old', network, width, 'float32')
        parts = []
        if real and fixed:
            parts.append('real/fixed %.3f' % (real / fixed))
        for variant in variants:
            other = find('new ' + variant, network, width, precision)
            if real and other:
                parts.append('[%s]/default %.3f' % (variant, other / real))
        if real and old32:
            parts.append('new/old float32 %.3f' % (real / old32))
        print('  %-7s w%-5g %-15s %s' % (network, width, precision, ', '.join(parts)))
    new, old = find('new', 'convnet', 1.0, 'float32'), find('old', 'convnet', 1.0, 'float32')
    if new and old:
        print('convnet width 1.0 float32 new/old step time: %.3f' % (new / old))


if __name__ == '__main__':
    main()
