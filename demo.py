"""What SESEMI buys on real data, in one command: trains the self-supervised
model and the supervised baseline on Fashion-MNIST with the same seed, labels
and step budget, then prints a table and draws their learning curves.

    .venv/bin/python demo.py            # or: make demo

The default setting follows from round 2 of the measured table
(docs/fashion-table.md) by a rule fixed before its first run: cell A, asl against
the supervised baseline at the ModelZoo's own schedule (50 labels, 300 epochs of
3 steps), qualified; the demo runs it at width 1/8 so that it fits 15 minutes on
slower CPUs, and prints what the table measured for its setting. After its first
steps it prints how long it expects to take on this CPU.
"""

import argparse
import json
import math
import os
import re
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
TABLE2 = os.path.join(ROOT, 'docs', 'fashion_table2.json')  # bench/fashion_table2.py's results
# A supervised step takes about 0.55-0.60 of a two-branch step (measured: width 1/8 and 1/4).
SUPERVISED_STEP_RATIO = 0.6
TEST_VIEWS = 10000 * 8  # Fashion-MNIST's test images, 8 dense views each
PROGRESS_SECONDS = 20  # the runs' progress lines, from which the demo's time is estimated
PROGRESS = re.compile(r'^step (\d+)/(\d+) .* (\d+) img/s')


def parse_args(argv=None) -> argparse.Namespace:
    """The demo's flags."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--dataset',
        default=FASHION_DIR,
        help='folder holding the four Fashion-MNIST .gz files (default %(default)s)',
    )
    parser.add_argument(
        '--labels', type=int, default=50, help='labeled training images (default %(default)s)'
    )
    parser.add_argument(
        '--mode',
        default='asl',
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
        '--steps', type=int, default=900, help='training steps of each run (default %(default)s)'
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


def train(args: argparse.Namespace, mode: str, then: int = 0) -> dict:
    """Runs the training entry for one mode, its output shown as it comes; returns its
    result and metrics. ``then``: steps of runs to come after this one, for the first
    estimate of the demo's time."""
    result = os.path.join(args.result, mode)
    shutil.rmtree(result, ignore_errors=True)  # the demo's own earlier run of this mode
    command = (
        [sys.executable, os.path.join(ROOT, 'train_evaluate_asl2.py')]
        + run_flags(args.dataset, args.width, args.labels, mode, args.steps, args.seed)
        + [
            '--eval_every_steps=%d' % max(1, args.steps // max(1, args.evaluations)),
            '--log_every_seconds=%d' % PROGRESS_SECONDS,
            '--result=' + result,
        ]
    )
    print('\n$ ' + ' '.join(command), flush=True)
    start = time.time()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1)
    estimated = not then
    for line in proc.stdout:
        if shown(line):
            print(line, end='', flush=True)
        match = PROGRESS.match(line)
        if match and not estimated:
            estimated = True
            step, total, rate = (int(g) for g in match.groups())
            print(estimate(args, mode, step, total, rate, time.time() - start, then), flush=True)
    if proc.wait():
        sys.exit(
            'error: the %s run failed (exit code %d); see the output above'
            % (mode, proc.returncode)
        )
    with open(os.path.join(result, 'result.json')) as f:
        final = json.load(f)
    with open(os.path.join(result, 'metrics.jsonl')) as f:
        rows = [json.loads(line) for line in f]
    return {'mode': mode, 'final': final, 'rows': rows, 'minutes': (time.time() - start) / 60}


def shown(line: str) -> bool:
    """Whether the demo shows a line of the entry's output: the run's size, progress,
    evaluations and the final result. The configuration (args.json), the model summary
    and the epoch lines (three steps each here; train.log) stay in the run's folder."""
    return bool(
        PROGRESS.match(line)
        or 'test error' in line
        or line.startswith(('Labeled images', 'Final test error', 'warning', 'error'))
    )


def estimate(
    args: argparse.Namespace,
    mode: str,
    step: int,
    total: int,
    rate: float,
    elapsed: float,
    then: int,
) -> str:
    """The demo's expected time on this CPU, from the first run's first progress line:
    its remaining steps at the rate so far, the supervised run's steps at
    ``SUPERVISED_STEP_RATIO`` of a step, and each dense evaluation as forward passes over
    the test set's views (a forward pass costs about a third of a training step)."""
    images = BATCH_SIZE * 6 * (2 if mode != 'supervised' else 1)  # per step
    seconds_per_step = images / max(rate, 1e-9)
    evaluation = TEST_VIEWS * seconds_per_step / images / 3
    start_up = max(0.0, elapsed - step * seconds_per_step)  # process start and data, again
    left = (
        (total - step) * seconds_per_step
        + args.evaluations * evaluation
        + start_up
        + then * seconds_per_step * SUPERVISED_STEP_RATIO
        + args.evaluations * evaluation
    )
    return (
        'Expected on this CPU: %.0f ms per %s step, about %.0f more minutes for both runs '
        '(%.1f minutes in all)' % (1000 * seconds_per_step, mode, left / 60, (left + elapsed) / 60)
    )


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


def measured(args: argparse.Namespace, path: str = TABLE, path2: str = TABLE2) -> str:
    """What the measured table says about this setting, over all its seeds: round 2's
    comparison with the moving statistics (its primary statistic), else round 1's."""
    for row in _read(path2, 'rows'):
        if (row['width'], row['labels'], row['mode'], row['steps']) == (
            args.width,
            args.labels,
            args.mode,
            args.steps,
        ) and 'interval' in row['moving']:
            cell = row['moving']
            return _sentence(
                'docs/fashion_table2.md, cell %s' % row['cell'],
                cell['seeds'],
                cell['supervised'],
                args.mode,
                cell['self'],
                cell['mean'],
                cell['se'],
                cell['interval'],
            )
    for cell in _read(path, 'cells'):
        if (cell['width'], cell['labels'], cell['mode'], cell['budget']) == (
            args.width,
            args.labels,
            args.mode,
            args.steps,
        ) and 'gain_mean' in cell:
            return _sentence(
                'docs/fashion_table.md',
                cell['seeds'],
                cell['supervised'],
                cell['mode'],
                cell['self'],
                cell['gain_mean'],
                cell['gain_se'],
                cell['gain_ci95'],
            )
    return (
        'This setting is not in the measured table (docs/fashion-table.md); one seed shows '
        'little, as errors vary by several points between seeds.'
    )


def _read(path: str, key: str) -> list:
    try:
        with open(path) as f:
            return json.load(f)[key]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _sentence(source, seeds, supervised, mode, own, mean, se, interval) -> str:
    """One sentence on a measured comparison (errors and gains in points)."""
    low, high = interval
    verdict = (
        'SESEMI beats the baseline at this budget'
        if low > 0
        else 'the baseline beats SESEMI at this budget'
        if high < 0
        else 'at this CPU budget the gain is not shown: the interval includes zero'
    )
    return (
        'The measured table (%s), seeds %s: supervised %.2f %%, %s %.2f %% (seed spread '
        '%.2f-%.2f %%); gain %+.2f +/- %.2f points (mean +/- SE), 95 %% interval '
        '[%+.2f, %+.2f]: %s.'
        % (
            source,
            ','.join(map(str, seeds)),
            statistics.mean(supervised),
            mode,
            statistics.mean(own),
            min(own),
            max(own),
            mean,
            se,
            low,
            high,
            verdict,
        )
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
    runs = [train(args, args.mode, then=args.steps), train(args, 'supervised')]
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
