"""Where does SESEMI beat its supervised baseline? A measured table on Fashion-MNIST.

Each cell compares a self-supervised mode (sesemi or asl) with the supervised
baseline at the same width, labels, step budget and seeds. Every run is the
training entry itself (ConvNet, float32), evaluated on the test set at 70, 85
and 100 % of its budget: a run has converged when those three dense errors lie
within 0.5 points. The gain is the paired difference over seeds, supervised −
self-supervised error, reported as mean ± standard error with the 95 % interval
from Student's t for its degrees of freedom.

Resumable: a finished run (its ``run.json``) is kept, an unfinished one is
started again, so the grid can go on across sessions. Runs are taken in the
order of ``CELLS`` (the mandatory cells first); ``--workers`` of them at a time,
each on ``--threads`` cores. After every run the report is rewritten:
``results/table/table.json``, ``table.md`` and ``table.png`` (with ``--publish``
also docs/fashion_table.*, committed with the code; the runs listed there count
as finished, so the grid goes on from them on another machine).

    source test/malloc.sh
    .venv/bin/python bench/fashion_table.py                   # the grid, in order
    .venv/bin/python bench/fashion_table.py --cells w0.125-l250-sesemi-b1500 --seeds 5-9
    .venv/bin/python bench/fashion_table.py --report --publish  # the report only, and its copy

The demo's setting follows from the table by a rule fixed before the grid ran:
among the cells noted 'demo budget', the one with the largest paired mean gain
whose 95 % interval excludes zero, if five fresh seeds (5-9) confirm it (their
paired mean gain is positive; an interval below zero is a significant loss, not a
gain). Otherwise the demo runs the demo-budget cell whose
runs all converged with the largest mean gain (if none converged, the one with
the smallest spread) and says, with the table's numbers, that the gain is not
shown at this budget.
"""

import argparse
import collections
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_DIR = '/usr/share/datasets/fashion-mnist'
# The report committed with the code; its runs count as finished, on any machine.
PUBLISHED = os.path.join(ROOT, 'docs', 'fashion_table')
CHECKPOINTS = (0.70, 0.85, 1.0)  # fractions of the budget evaluated
CONVERGED_POINTS = 0.5  # the largest spread of those evaluations for a converged run

Cell = collections.namedtuple('Cell', 'width labels mode budget seeds note')

# In the order they are run. 'demo budget': the pair of runs fits `make demo`
# (a fresh clone's setup plus both runs) within 15 minutes on this 2-core host.
REPORT_LOCK = threading.Lock()  # the workers rewrite the report in turn

CELLS = (
    Cell(0.25, 250, 'sesemi', 1500, (0, 1, 2), 'mandatory'),
    Cell(0.25, 1000, 'sesemi', 1500, (0, 1, 2), 'mandatory'),
    Cell(0.125, 250, 'sesemi', 1500, (0, 1, 2, 3, 4), 'demo budget'),
    Cell(0.125, 250, 'asl', 1500, (0, 1, 2, 3, 4), 'demo budget'),
    Cell(0.25, 250, 'asl', 1500, (0, 1, 2), ''),
    Cell(0.25, 100, 'sesemi', 1500, (0, 1, 2), ''),
    Cell(0.5, 250, 'sesemi', 1500, (0, 1, 2), ''),
    Cell(0.25, 250, 'sesemi', 3000, (0, 1, 2), ''),
)


def cell_name(cell: Cell) -> str:
    return 'w%g-l%d-%s-b%d' % (cell.width, cell.labels, cell.mode, cell.budget)


def run_name(width: float, labels: int, mode: str, budget: int, seed: int) -> str:
    return 'w%g-l%d-%s-b%d-s%d' % (width, labels, mode, budget, seed)


def eval_steps(budget: int) -> list:
    return [int(round(f * budget)) for f in CHECKPOINTS]


def parse_seeds(text: str) -> list:
    """'5-9' or '0,2,4' → a list of ints."""
    seeds = []
    for part in text.split(','):
        low, _, high = part.partition('-')
        seeds.extend(range(int(low), int(high or low) + 1))
    return seeds


def plan(cells, seeds=None) -> list:
    """The runs of ``cells`` in order, each baseline before its comparison, no run twice."""
    runs = []
    for cell in cells:
        for seed in seeds or cell.seeds:
            for mode in ('supervised', cell.mode):
                run = (cell.width, cell.labels, mode, cell.budget, seed)
                if run not in runs:
                    runs.append(run)
    return runs


def train_command(
    folder: str, width: float, labels: int, mode: str, budget: int, seed: int, dataset: str
) -> list:
    sys.path.insert(0, ROOT)
    from demo import run_flags

    return run_flags(dataset, width, labels, mode, budget, seed) + [
        '--steps_per_execution=1',
        '--ckpt_every_steps=%d' % budget,
        '--log_every_seconds=120',
        '--result=' + folder,
    ]


def child(folder: str, steps: list, argv: list) -> int:
    """Runs the training entry in this process, evaluating the test set after each
    step in ``steps`` (besides the entry's own evaluation at the end) into evals.jsonl."""
    sys.path.insert(0, ROOT)
    import train_evaluate_asl2 as entry

    evals_path = os.path.join(folder, 'evals.jsonl')

    def evaluations(training):
        from sesemi_base.compat import keras, to_float

        class EvaluateAt(keras.callbacks.Callback):
            """Evaluates the test set after the steps in ``steps`` (before the last)."""

            def on_train_batch_end(self, batch, logs=None):
                step = int(to_float(self.model.optimizer.iterations))
                if step in steps and step < training.plan.total_steps:
                    with open(evals_path, 'a') as f:
                        f.write(json.dumps(dict(training.evaluate(), step=step)) + '\n')

            on_batch_end = on_train_batch_end  # TF 1.15 calls this name

        return EvaluateAt()

    return entry.main(['train_evaluate_asl2.py'] + argv, callbacks=[evaluations])


def published_runs() -> dict:
    """The runs of the committed report, by (width, labels, mode, budget, seed)."""
    try:
        with open(PUBLISHED + '.json') as f:
            runs = json.load(f)['runs']
    except (OSError, ValueError, KeyError):
        runs = []
    return {(r['width'], r['labels'], r['mode'], r['budget'], r['seed']): r for r in runs}


def train(args, run: tuple) -> dict:
    """One run in a child process (or what it or the committed report left before);
    returns its run.json."""
    width, labels, mode, budget, seed = run
    folder = os.path.join(args.result, 'runs', run_name(*run))
    done = os.path.join(folder, 'run.json')
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    published = published_runs().get(run)
    if published:
        return published
    shutil.rmtree(folder, ignore_errors=True)  # an unfinished run starts again
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    env = dict(
        os.environ,
        TF_NUM_INTRAOP_THREADS=str(args.threads),
        TF_NUM_INTEROP_THREADS=str(args.threads),
    )
    start = time.time()
    log = folder + '.log'
    with open(log, 'w') as out:
        code = subprocess.call(
            [
                sys.executable,
                os.path.abspath(__file__),
                '--child',
                folder,
                '--eval_steps',
                ','.join(map(str, eval_steps(budget))),
                '--',
            ]
            + train_command(folder, width, labels, mode, budget, seed, args.dataset),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    if code:
        print('run %s failed (exit code %d); see %s' % (run_name(*run), code, log), flush=True)
        return None
    with open(os.path.join(folder, 'result.json')) as f:
        final = json.load(f)
    with open(os.path.join(folder, 'evals.jsonl')) as f:
        evals = [json.loads(line) for line in f]
    with open(os.path.join(folder, 'metrics.jsonl')) as f:
        rows = [json.loads(line) for line in f]
    evals.append(
        {
            'step': final['steps'],
            'error_dense': final['error_dense'],
            'error_single': final['error_single'],
        }
    )
    record = {
        'width': width,
        'labels': labels,
        'mode': mode,
        'budget': budget,
        'seed': seed,
        'error_dense': final['error_dense'],
        'error_single': final['error_single'],
        'evals': evals,
        'minutes': (time.time() - start) / 60,
        'ms_per_step': statistics.median(r['ms_per_step'] for r in rows),
        'threads': args.threads,
        'tf_version': final['tf_version'],
    }
    with open(done, 'w') as f:
        json.dump(record, f, indent=1)
    print(
        '%s: dense test error %.2f %% (evaluations %s), %.1f min'
        % (
            run_name(*run),
            100 * final['error_dense'],
            ' '.join('%.2f' % (100 * e['error_dense']) for e in evals),
            record['minutes'],
        ),
        flush=True,
    )
    return record


def spread(record: dict) -> float:
    """Points between the best and the worst of a run's last three evaluations."""
    errors = [100 * e['error_dense'] for e in record['evals']]
    return max(errors) - min(errors)


def summarize(cell: Cell, records: dict) -> dict:
    """The cell's paired statistics over every seed with both runs finished."""
    from scipy import stats

    pairs = []
    for key, own in sorted(records.items()):
        width, labels, mode, budget, seed = key
        if (width, labels, mode, budget) == (cell.width, cell.labels, cell.mode, cell.budget):
            base = records.get((width, labels, 'supervised', budget, seed))
            if base:
                pairs.append((seed, base, own))
    out = {
        'cell': cell_name(cell),
        'width': cell.width,
        'labels': cell.labels,
        'mode': cell.mode,
        'budget': cell.budget,
        'note': cell.note,
        'seeds': [p[0] for p in pairs],
        'supervised': [100 * p[1]['error_dense'] for p in pairs],
        'self': [100 * p[2]['error_dense'] for p in pairs],
        'gains': [100 * (p[1]['error_dense'] - p[2]['error_dense']) for p in pairs],
        'spreads': [[round(spread(p[1]), 2), round(spread(p[2]), 2)] for p in pairs],
        'minutes_supervised': [p[1]['minutes'] for p in pairs],
        'minutes_self': [p[2]['minutes'] for p in pairs],
    }
    out['converged'] = bool(pairs) and all(max(s) <= CONVERGED_POINTS for s in out['spreads'])
    n = len(pairs)
    if n >= 2:
        gains = out['gains']
        out['gain_mean'] = statistics.mean(gains)
        out['gain_se'] = statistics.stdev(gains) / math.sqrt(n)
        out['t_critical'] = float(stats.t.ppf(0.975, n - 1))
        half = out['t_critical'] * out['gain_se']
        out['gain_ci95'] = [out['gain_mean'] - half, out['gain_mean'] + half]
    return out


def mean_text(values: list) -> str:
    return '%.2f' % statistics.mean(values) if values else '–'


def markdown(cells: list) -> str:
    lines = [
        (
            '| width | labels | mode | steps | seeds | supervised error % '
            '| self-supervised error % | gain (sup − self), mean ± SE '
            '| 95 % interval (t, df) | converged | minutes per run (sup / self) | note |'
        ),
        '|---|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for c in cells:
        if not c['seeds']:
            continue
        if 'gain_mean' in c:
            gain = '%+.2f ± %.2f' % (c['gain_mean'], c['gain_se'])
            interval = '[%+.2f, %+.2f] (%.2f, %d)' % (
                c['gain_ci95'][0],
                c['gain_ci95'][1],
                c['t_critical'],
                len(c['seeds']) - 1,
            )
        else:
            gain, interval = '%+.2f (one seed)' % c['gains'][0], '–'
        converged = (
            'yes'
            if c['converged']
            else 'no (largest spread %.2f)' % max(max(s) for s in c['spreads'])
        )
        lines.append(
            '| %g | %d | %s | %d | %s | %s | %s | %s | %s | %s | %s / %s | %s |'
            % (
                c['width'],
                c['labels'],
                c['mode'],
                c['budget'],
                ','.join(map(str, c['seeds'])),
                mean_text(c['supervised']),
                mean_text(c['self']),
                gain,
                interval,
                converged,
                mean_text(c['minutes_supervised']),
                mean_text(c['minutes_self']),
                c['note'],
            )
        )
    return '\n'.join(lines) + '\n'


def plot(cells: list, path: str) -> None:
    """Each cell's gain per seed (dots) and its mean with the 95 % interval."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    cells = [c for c in cells if c['seeds']]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(cells)), 4.5))
    for i, c in enumerate(cells):
        ax.plot([i] * len(c['gains']), c['gains'], 'o', color='tab:gray', alpha=0.6)
        if 'gain_mean' in c:
            low, high = c['gain_ci95']
            ax.errorbar(
                [i],
                [c['gain_mean']],
                yerr=[[c['gain_mean'] - low], [high - c['gain_mean']]],
                fmt='s',
                color='tab:blue' if c['converged'] else 'tab:orange',
                capsize=5,
            )
    ax.axhline(0, color='black', linewidth=0.8)
    ax.set_xticks(range(len(cells)))
    ax.set_xticklabels(
        [
            'w%g %d labels\n%s %d steps' % (c['width'], c['labels'], c['mode'], c['budget'])
            for c in cells
        ],
        fontsize=8,
    )
    ax.set_ylabel('gain: supervised − self-supervised\ndense test error (points)')
    ax.set_title(
        'Fashion-MNIST: paired gain per seed (dots), mean and 95 % interval\n'
        '(blue: every run converged, orange: not)'
    )
    ax.grid(axis='y', alpha=0.3)
    fig.tight_layout()
    fig.savefig(path + '.tmp.png', dpi=110)
    os.replace(path + '.tmp.png', path)


def report(args) -> str:
    """Rewrites table.json, table.md and table.png from the finished runs; returns the markdown."""
    with REPORT_LOCK:
        return write_report(args)


def write_report(args) -> str:
    records = published_runs()
    runs = os.path.join(args.result, 'runs')
    for name in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
        done = os.path.join(runs, name, 'run.json')
        if os.path.exists(done):
            with open(done) as f:
                r = json.load(f)
            records[(r['width'], r['labels'], r['mode'], r['budget'], r['seed'])] = r
    cells = [summarize(cell, records) for cell in CELLS]
    with open(os.path.join(args.result, 'table.json'), 'w') as f:
        json.dump(
            {
                'cells': cells,
                'runs': list(records.values()),
                'converged_points': CONVERGED_POINTS,
                'evaluated_at': CHECKPOINTS,
            },
            f,
            indent=1,
        )
    text = markdown(cells)
    with open(os.path.join(args.result, 'table.md'), 'w') as f:
        f.write(text)
    plot(cells, os.path.join(args.result, 'table.png'))
    if args.publish:
        for ext in ('json', 'md', 'png'):
            shutil.copyfile(os.path.join(args.result, 'table.' + ext), PUBLISHED + '.' + ext)
    return text


def make_parser() -> argparse.ArgumentParser:
    """The script's flags, built apart from main() so that tests/test_docs.py can check
    the command lines the documentation quotes against them."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--cells',
        default='',
        help='comma-separated cell names (e.g. w0.125-l250-sesemi-b1500); default all',
    )
    parser.add_argument('--seeds', default='', help="seeds instead of each cell's, e.g. 5-9")
    parser.add_argument('--workers', type=int, default=2, help='runs at a time (default 2)')
    parser.add_argument('--threads', type=int, default=1, help='cores of each run (default 1)')
    parser.add_argument('--dataset', default=FASHION_DIR)
    parser.add_argument('--result', default=os.path.join(ROOT, 'results', 'table'))
    parser.add_argument('--report', action='store_true', help='only rewrite the report')
    parser.add_argument(
        '--publish',
        action='store_true',
        help='also copy the report to docs/fashion_table.{json,md,png}',
    )
    parser.add_argument('--child', help=argparse.SUPPRESS)
    parser.add_argument('--eval_steps', help=argparse.SUPPRESS)
    parser.add_argument('train_flags', nargs='*', help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, [int(s) for s in args.eval_steps.split(',')], args.train_flags)
    os.makedirs(args.result, exist_ok=True)
    if not args.report:
        names = [n for n in args.cells.split(',') if n]
        unknown = set(names) - {cell_name(c) for c in CELLS}
        if unknown:
            parser.error(
                'unknown cell %s; known: %s'
                % (', '.join(sorted(unknown)), ', '.join(cell_name(c) for c in CELLS))
            )
        cells = [c for c in CELLS if not names or cell_name(c) in names]
        runs = plan(cells, parse_seeds(args.seeds) if args.seeds else None)
        with ThreadPoolExecutor(args.workers) as pool:
            for _ in pool.map(lambda run: (train(args, run), report(args)), runs):
                pass
    print(report(args))
    return 0


if __name__ == '__main__':
    sys.exit(main())
