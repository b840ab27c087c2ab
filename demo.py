"""What SESEMI buys on real data, in one command: trains the self-supervised
model and the supervised baseline on Fashion-MNIST with the same seed, labels
and step budget, then prints a table and draws their learning curves.

    .venv/bin/python demo.py            # or: make demo

The default setting was chosen from the measured table in docs/fashion_table.md
by a rule fixed before the table was run (docs/fashion-table.md, "The demo's
setting"); the demo prints that table's numbers for the setting it ran.
"""

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.abspath(__file__))
FASHION_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_FILES = (
    'train-images-idx3-ubyte.gz',
    'train-labels-idx1-ubyte.gz',
    't10k-images-idx3-ubyte.gz',
    't10k-labels-idx1-ubyte.gz',
)
BATCH_SIZE = 16  # the entry's default, as in the reference
POOL = 60000  # Fashion-MNIST training images: the sesemi pool
TABLE = os.path.join(ROOT, 'docs', 'fashion_table.json')  # bench/fashion_table.py's results


def parse_args(argv=None) -> argparse.Namespace:
    """The demo's flags."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--dataset',
        default=FASHION_DIR,
        help='folder holding the four Fashion-MNIST .gz files (default %(default)s)',
    )
    parser.add_argument(
        '--labels', type=int, default=250, help='labeled training images (default %(default)s)'
    )
    parser.add_argument(
        '--mode',
        default='sesemi',
        choices=('asl', 'sesemi'),
        help='self-supervised mode compared with the baseline (default %(default)s)',
    )
    parser.add_argument(
        '--width',
        type=float,
        default=0.125,
        help='ConvNet channel multiplier (default %(default)s)',
    )
    parser.add_argument(
        '--steps', type=int, default=1500, help='training steps of each run (default %(default)s)'
    )
    parser.add_argument(
        '--evaluations',
        type=int,
        default=3,
        help='dense test evaluations along each run, for the curves (default %(default)s)',
    )
    parser.add_argument(
        '--seed', type=int, default=0, help='seed of both runs (default %(default)s)'
    )
    parser.add_argument(
        '--result',
        default=os.path.join('results', 'demo'),
        help='output folder; its sub-folder of each mode is replaced (default %(default)s)',
    )
    return parser.parse_args(argv)


def check_dataset(folder: str) -> None:
    """Exits with one line when ``folder`` lacks a Fashion-MNIST file."""
    missing = [f for f in FASHION_FILES if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        sys.exit(
            'error: Fashion-MNIST not found in %s (missing %s). Install it with '
            '`apt-get install dataset-fashion-mnist`, or put the four files %s in a folder '
            'and pass --dataset=FOLDER' % (folder, ', '.join(missing), ', '.join(FASHION_FILES))
        )


def run_flags(dataset: str, width: float, labels: int, mode: str, steps: int, seed: int) -> list:
    """The entry's flags for a Fashion-MNIST ConvNet run of ``steps`` steps (in as many
    epochs as they need); the demo's and bench/fashion_table.py's runs."""
    steps_per_epoch = max(1, (POOL if mode == 'sesemi' else labels) // BATCH_SIZE)
    return [
        '--data=fashion_mnist',
        '--dataset=' + dataset,
        '--network=convnet',
        '--width=%g' % width,
        '--labels=%d' % labels,
        '--mode=' + mode,
        '--epochs=%d' % math.ceil(steps / steps_per_epoch),
        '--max_steps=%d' % steps,
        '--seed=%d' % seed,
    ]


def train(args: argparse.Namespace, mode: str) -> dict:
    """Runs the training entry for one mode; returns its result and metrics."""
    result = os.path.join(args.result, mode)
    shutil.rmtree(result, ignore_errors=True)  # the demo's own earlier run of this mode
    command = (
        [sys.executable, os.path.join(ROOT, 'train_evaluate_asl2.py')]
        + run_flags(args.dataset, args.width, args.labels, mode, args.steps, args.seed)
        + [
            '--eval_every_steps=%d' % max(1, args.steps // max(1, args.evaluations)),
            '--result=' + result,
        ]
    )
    print('\n$ ' + ' '.join(command), flush=True)
    start = time.time()
    proc = subprocess.run(command)
    if proc.returncode:
        sys.exit(
            'error: the %s run failed (exit code %d); see the output above'
            % (mode, proc.returncode)
        )
    with open(os.path.join(result, 'result.json')) as f:
        final = json.load(f)
    with open(os.path.join(result, 'metrics.jsonl')) as f:
        rows = [json.loads(line) for line in f]
    return {'mode': mode, 'final': final, 'rows': rows, 'minutes': (time.time() - start) / 60}


def table(args: argparse.Namespace, runs: list) -> str:
    """The two runs' errors and minutes, their difference, and the measured table's verdict."""
    lines = ['%-7s %-11s %6s %17s %8s' % ('labels', 'mode', 'steps', 'dense test error', 'minutes')]
    for run in runs:
        lines.append(
            '%-7d %-11s %6d %16.2f%% %8.1f'
            % (
                args.labels,
                run['mode'],
                run['final']['steps'],
                100 * run['final']['error_dense'],
                run['minutes'],
            )
        )
    gain = 100 * (runs[1]['final']['error_dense'] - runs[0]['final']['error_dense'])
    lines.append(
        'difference (supervised - %s): %+.2f points of test error, seed %d'
        % (runs[0]['mode'], gain, args.seed)
    )
    lines.append(measured(args))
    return '\n'.join(lines)


def measured(args: argparse.Namespace, path: str = TABLE) -> str:
    """What the measured table says about this setting, over all its seeds."""
    try:
        with open(path) as f:
            cells = json.load(f)['cells']
    except (OSError, ValueError, KeyError):
        cells = []
    for cell in cells:
        if (cell['width'], cell['labels'], cell['mode'], cell['budget']) == (
            args.width,
            args.labels,
            args.mode,
            args.steps,
        ) and 'gain_mean' in cell:
            low, high = cell['gain_ci95']
            verdict = (
                'SESEMI beats the baseline at this budget'
                if low > 0
                else 'the baseline beats SESEMI at this budget'
                if high < 0
                else 'at this CPU budget the gain is not shown: the interval includes zero'
            )
            return (
                'The measured table (docs/fashion_table.md), seeds %s: supervised %.2f %%, %s '
                '%.2f %% (seed spread %.2f-%.2f %%); gain %+.2f +/- %.2f points (mean +/- SE), '
                '95 %% interval [%+.2f, %+.2f]: %s.'
                % (
                    ','.join(map(str, cell['seeds'])),
                    statistics.mean(cell['supervised']),
                    cell['mode'],
                    statistics.mean(cell['self']),
                    min(cell['self']),
                    max(cell['self']),
                    cell['gain_mean'],
                    cell['gain_se'],
                    low,
                    high,
                    verdict,
                )
            )
    return (
        'This setting is not in the measured table (docs/fashion_table.md); one seed shows '
        'little, as errors vary by several points between seeds.'
    )


def plot(runs: list, path: str) -> None:
    """Loss terms and dense test error against steps, both runs on one figure."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (losses, errors) = plt.subplots(1, 2, figsize=(11, 4))
    for run, color in zip(runs, ('tab:blue', 'tab:orange')):
        steps = [r['step'] for r in run['rows']]
        losses.plot(
            steps,
            [r['super_loss'] for r in run['rows']],
            color=color,
            label='%s: supervised loss' % run['mode'],
        )
        if run['rows'][0]['self_loss'] is not None:
            losses.plot(
                steps,
                [r['self_loss'] for r in run['rows']],
                color=color,
                linestyle='--',
                label='%s: self-supervised loss' % run['mode'],
            )
        evaluated = [r for r in run['rows'] if 'error_dense' in r]
        errors.plot(
            [r['step'] for r in evaluated],
            [100 * r['error_dense'] for r in evaluated],
            color=color,
            marker='o',
            label=run['mode'],
        )
    losses.set(xlabel='step', ylabel='cross-entropy', title='Training losses')
    errors.set(xlabel='step', ylabel='dense test error (%)', title='Test error')
    for ax in (losses, errors):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = path + '.tmp.png'
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def main(argv=None) -> int:
    """Runs both modes, prints the table and draws the curves."""
    args = parse_args(argv)
    check_dataset(args.dataset)
    os.makedirs(args.result, exist_ok=True)
    start = time.time()
    runs = [train(args, args.mode), train(args, 'supervised')]
    text = table(args, runs)
    png = os.path.join(args.result, 'learning_curves.png')
    plot(runs, png)
    print('\n' + text)
    print('Learning curves: %s; total %.1f minutes' % (png, (time.time() - start) / 60))
    with open(os.path.join(args.result, 'summary.txt'), 'w') as f:
        f.write(text + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
