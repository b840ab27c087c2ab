r"""SESEMI's gain at the reference's own ASL schedule: the Fashion-MNIST table, round 2.

Round 1 (bench/fashion_table.py) compressed SESEMI's schedule into 1 % of the
reference's budget. Round 2 runs the ModelZoo entry's own mode, asl, at its own
schedule, uncompressed: 300 epochs of labels // 16 steps (900 steps for 50
labels). Its runs, records and report are its own; no run of round 1 is paired
with one of round 2.

Every run is the training entry itself (ConvNet-13, float32, the reference's
batch and schedule, the labeled split of the reference: one split, seed 1), with
the BatchNorm statistics of the labeled branch; after it, ``evaluate.py
--precise_bn=200`` evaluates its model.h5 again with recomputed ("precise")
statistics. A run's record (docs/fashion_table2/runs/<run>.json) holds the
commit, the CPU (``lscpu``'s model name), the flags, the dense and single-view
test errors with both statistics by name, and its minutes.

The rules, fixed before the first run:

- PRIMARY comparison: cell A, asl − supervised, dense test error with the moving
  statistics. Every other comparison (sesemi, the precise statistics, the other
  cells) is secondary and reported as such.
- A gain is supervised − self-supervised error, paired over seeds (the seed sets
  the weights, batch order and augmentation of both runs). It is *shown* when its
  95 % interval (Student's t, n − 1 degrees of freedom) excludes zero above it;
  when the interval holds zero, the report gives the smallest gain the cell could
  have detected with 80 % power from the measured spread,
  (t₀.₉₇₅ + t₀.₈₀) · SE. Every seed run is reported.
- Cells, in order: A (primary); A's confirmation (five fresh seeds, run only if
  A's primary interval lies above zero); B (the demo's cell of round 1, run only
  if A does not qualify for the demo) and its confirmation (only if B's interval
  lies above zero); then C, D and E as time allows.
- The demo: a cell qualifies when its interval lies above zero and, with its
  five confirmation seeds added, the pooled interval over all its seeds still
  does. The demo runs A's comparison if A qualifies, else B's if B qualifies,
  else A's comparison, printing that the gain is not shown.

Resumable, across sessions and machines: runs checkpoint every 100 steps and an
interrupted run resumes from its newest checkpoint; a finished run's record is
written to docs/fashion_table2/runs/ (with ``--commit`` also committed), and a run
with a record is never run again. It is meant to run from a fixed commit in a
``git worktree`` with a venv of its own:

    git worktree add ../table2 <commit> && cd ../table2 && python3.11 -m venv .venv \\
        && .venv/bin/pip install -r requirements.txt
    source test/malloc.sh && .venv/bin/python bench/fashion_table2.py --commit
    .venv/bin/python bench/fashion_table2.py --report         # the report only
"""

import argparse
import collections
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from demo import run_flags  # noqa: E402  (the demo's and the tables' run flags, in one place)

FASHION_DIR = '/usr/share/datasets/fashion-mnist'
PUBLISHED = os.path.join(ROOT, 'docs', 'fashion_table2')  # runs/, and the report beside it
PRECISE_BATCHES = 200
CHECKPOINT_EVERY = 100  # steps
CONFIDENCE, POWER = 0.95, 0.80
PRIMARY = ('A', 'asl')  # the primary comparison: cell A, asl − supervised, moving statistics

Cell = collections.namedtuple('Cell', 'name width labels steps modes seeds role')

CELLS = (
    Cell('A', 0.25, 50, 900, ('asl', 'sesemi'), tuple(range(6)), 'primary'),
    Cell('A-confirm', 0.25, 50, 900, ('asl',), tuple(range(6, 11)), 'confirms A'),
    Cell('B', 0.125, 250, 1500, ('sesemi',), tuple(range(5)), 'demo fallback'),
    Cell('B-confirm', 0.125, 250, 1500, ('sesemi',), tuple(range(5, 10)), 'confirms B'),
    # Added once A qualified: the demo runs A's comparison at width 1/8, which fits 15 minutes
    # on the slower CPUs; these seeds measure what the narrower network costs (secondary).
    Cell('demo', 0.125, 50, 900, ('asl',), tuple(range(6)), "the demo's setting"),
    Cell('C', 0.25, 100, 1800, ('asl', 'sesemi'), tuple(range(4)), ''),
    Cell('D', 0.5, 50, 900, ('asl', 'sesemi'), tuple(range(3)), ''),
    Cell('E', 0.25, 250, 4500, ('asl', 'sesemi'), tuple(range(3)), ''),
)
CONFIRMS = {'A-confirm': 'A', 'B-confirm': 'B'}

Run = collections.namedtuple('Run', 'width labels mode steps seed')
REPORT_LOCK = threading.Lock()
COMMIT_LOCK = threading.Lock()


def run_name(run: Run) -> str:
    return 'w%g-l%d-%s-s%d-seed%d' % (run.width, run.labels, run.mode, run.steps, run.seed)


def cell_runs(cell: Cell) -> List[Run]:
    """The runs of ``cell``: for each seed the supervised baseline, then each mode."""
    return [
        Run(cell.width, cell.labels, mode, cell.steps, seed)
        for seed in cell.seeds
        for mode in ('supervised',) + cell.modes
    ]


# ------------------------------------------------------------------ statistics


def paired(
    cell: Cell,
    mode: str,
    records: Dict[Run, dict],
    statistic: str,
    seeds: Optional[Tuple[int, ...]] = None,
) -> dict:
    """Supervised − ``mode`` dense test error (points) of ``cell``, paired over the
    seeds (default the cell's) with both runs finished, with ``statistic`` 'moving'
    or 'precise': per-seed gains, mean ± SE, the 95 % interval and, when it holds
    zero, the smallest gain detectable with 80 % power."""
    from scipy import stats

    key = 'error_dense_' + statistic
    out = {'seeds': [], 'supervised': [], 'self': [], 'gains': []}
    for seed in seeds or cell.seeds:
        base = records.get(Run(cell.width, cell.labels, 'supervised', cell.steps, seed))
        own = records.get(Run(cell.width, cell.labels, mode, cell.steps, seed))
        if base and own:
            out['seeds'].append(seed)
            out['supervised'].append(100 * base[key])
            out['self'].append(100 * own[key])
            out['gains'].append(100 * (base[key] - own[key]))
    n = len(out['gains'])
    if n >= 2:
        mean, se = statistics.mean(out['gains']), statistics.stdev(out['gains']) / math.sqrt(n)
        t = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1))
        out.update(mean=mean, se=se, t=t, interval=[mean - t * se, mean + t * se])
        if not (out['interval'][0] > 0 or out['interval'][1] < 0):
            out['detectable'] = (t + float(stats.t.ppf(POWER, n - 1))) * se
    return out


def shown(comparison: dict) -> bool:
    """Whether the comparison's interval lies above zero."""
    return 'interval' in comparison and comparison['interval'][0] > 0


def verdict(comparison: dict) -> str:
    if 'interval' not in comparison:
        return 'too few seeds'
    low, high = comparison['interval']
    if low > 0:
        return 'gain shown'
    if high < 0:
        return 'loss shown'
    return 'not shown (detectable with 80 %% power: %.2f points)' % comparison['detectable']


def cell_by_name(name: str) -> Cell:
    return next(c for c in CELLS if c.name == name)


def qualifies(name: str, records: Dict[Run, dict]) -> Optional[bool]:
    """The demo rule for cell ``name`` (A or B): its interval above zero, and with its
    confirmation seeds the pooled interval too. None while runs are missing."""
    cell, confirm = cell_by_name(name), cell_by_name(name + '-confirm')
    mode = cell.modes[0]
    first = paired(cell, mode, records, 'moving')
    if len(first['seeds']) < len(cell.seeds):
        return None
    if not shown(first):
        return False
    pooled = paired(cell, mode, records, 'moving', cell.seeds + confirm.seeds)
    if len(pooled['seeds']) < len(cell.seeds + confirm.seeds):
        return None
    return shown(pooled)


def due(cell: Cell, records: Dict[Run, dict]) -> bool:
    """Whether the grid runs ``cell`` now, given the records so far (the order of the rules)."""
    a, b = qualifies('A', records), qualifies('B', records)
    if cell.name == 'A-confirm':
        return shown(paired(cell_by_name('A'), 'asl', records, 'moving'))
    if cell.name == 'B':
        return a is False
    if cell.name == 'B-confirm':
        return a is False and shown(paired(cell_by_name('B'), 'sesemi', records, 'moving'))
    if cell.name == 'demo':
        return a is True
    if cell.name in ('C', 'D', 'E'):
        return a is not None and (a or b is not None)
    return True


def demo_cell(records: Dict[Run, dict]) -> Tuple[str, bool]:
    """(the cell whose comparison the demo runs, whether its gain is shown)."""
    if qualifies('A', records):
        return 'A', True
    if qualifies('B', records):
        return 'B', True
    return 'A', False


# ------------------------------------------------------------------ running


def host_cpu() -> str:
    """The CPU as ``lscpu`` names it (model name, family, model) and its widest vector
    instructions."""
    try:
        text = subprocess.run(['lscpu'], stdout=subprocess.PIPE, text=True).stdout
    except OSError:
        return platform.processor() or 'unknown'
    fields = dict(line.split(':', 1) for line in text.splitlines() if ':' in line)
    name = fields.get('Model name', 'unknown').strip()
    flags = fields.get('Flags', '').split()
    return '%s, family %s model %s (%s)' % (
        name,
        fields.get('CPU family', '?').strip(),
        fields.get('Model', '?').strip(),
        'AVX-512 BF16'
        if 'avx512_bf16' in flags
        else 'AVX-512'
        if 'avx512f' in flags
        else 'AVX2 only'
        if 'avx2' in flags
        else 'no AVX2',
    )


def code_commit() -> str:
    """The newest commit that changed anything but this table's records and report: the
    code the runs ran (record commits follow it in the grid's worktree)."""
    return subprocess.run(
        [
            'git',
            '-C',
            ROOT,
            'rev-list',
            '-1',
            'HEAD',
            '--',
            '.',
            ':(exclude)docs/fashion_table2',
            ':(exclude)docs/fashion_table2.*',
        ],
        stdout=subprocess.PIPE,
        text=True,
    ).stdout.strip()


def published_records() -> Dict[Run, dict]:
    """Every record in docs/fashion_table2/runs/, by run."""
    folder = os.path.join(PUBLISHED, 'runs')
    records = {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        with open(os.path.join(folder, name)) as f:
            r = json.load(f)
        records[Run(r['width'], r['labels'], r['mode'], r['steps'], r['seed'])] = r
    return records


def attempt(command: List[str], log: str, env: dict) -> Tuple[int, float]:
    """Runs ``command`` with its output appended to ``log``; (exit code, minutes)."""
    start = time.time()
    with open(log, 'a') as out:
        out.write('$ %s\n' % ' '.join(command))
        out.flush()
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    return code, (time.time() - start) / 60


def train(args, run: Run) -> Optional[dict]:
    """One run (trained, or resumed from its newest checkpoint), evaluated with precise
    statistics; writes and returns its record (None when it failed)."""
    name = run_name(run)
    record_path = os.path.join(PUBLISHED, 'runs', name + '.json')
    folder = os.path.join(args.result, 'runs', name)
    os.makedirs(folder, exist_ok=True)
    log, minutes_path = os.path.join(folder, 'run.log'), os.path.join(folder, 'minutes.jsonl')
    env = dict(
        os.environ,
        TF_NUM_INTRAOP_THREADS=str(args.threads),
        TF_NUM_INTEROP_THREADS=str(args.threads),
        CUDA_VISIBLE_DEVICES='',
    )
    trained = os.path.join(folder, 'trained')
    flags = run_flags(args.dataset, run.width, run.labels, run.mode, run.steps, run.seed) + [
        '--ckpt_every_steps=%d' % CHECKPOINT_EVERY,
        '--log_every_seconds=300',
        '--result=' + trained,
    ]
    if not os.path.exists(os.path.join(trained, 'result.json')):
        resume = (
            ['--resume']
            if os.path.exists(os.path.join(trained, 'checkpoints', 'checkpoint'))
            else []
        )
        if not resume:
            shutil.rmtree(trained, ignore_errors=True)  # stopped before its first checkpoint
        code, minutes = attempt(
            [sys.executable, os.path.join(ROOT, 'train_evaluate_asl2.py')] + flags + resume,
            log,
            env,
        )
        with open(minutes_path, 'a') as f:
            f.write(
                json.dumps(
                    {
                        'part': 'train',
                        'minutes': minutes,
                        'resumed': bool(resume),
                        'exit_code': code,
                    }
                )
                + '\n'
            )
        if code:
            print('%s: training failed (exit code %d); see %s' % (name, code, log), flush=True)
            return None
    precise = os.path.join(folder, 'precise.json')
    if not os.path.exists(precise):
        code, minutes = attempt(
            [
                sys.executable,
                os.path.join(ROOT, 'evaluate.py'),
                '--model=' + os.path.join(trained, 'model.h5'),
                '--dataset=' + args.dataset,
                '--precise_bn=%d' % PRECISE_BATCHES,
                '--output=' + precise,
            ],
            log,
            env,
        )
        with open(minutes_path, 'a') as f:
            f.write(json.dumps({'part': 'precise', 'minutes': minutes, 'exit_code': code}) + '\n')
        if code:
            print(
                '%s: precise evaluation failed (exit code %d); see %s' % (name, code, log),
                flush=True,
            )
            return None
    with open(os.path.join(trained, 'result.json')) as f:
        final = json.load(f)
    with open(precise) as f:
        post_hoc = json.load(f)
    with open(os.path.join(trained, 'metrics.jsonl')) as f:
        rows = [json.loads(line) for line in f]
    with open(minutes_path) as f:
        parts = [json.loads(line) for line in f]
    record = dict(
        run._asdict(),
        round=2,
        commit=args.commit,
        cpu=args.cpu,
        flags=flags[:-1],
        threads=args.threads,
        tf_version=final['tf_version'],
        error_dense_moving=final['error_dense'],
        error_single_moving=final['error_single'],
        error_dense_precise=post_hoc['error_dense_precise'],
        error_single_precise=post_hoc['error_single_precise'],
        precise_bn=PRECISE_BATCHES,
        steps_done=final['steps'],
        minutes=sum(p['minutes'] for p in parts),
        minutes_precise=sum(p['minutes'] for p in parts if p['part'] == 'precise'),
        resumed=any(p.get('resumed') for p in parts),
        ms_per_step=statistics.median(r['ms_per_step'] for r in rows),
    )
    os.makedirs(os.path.dirname(record_path), exist_ok=True)
    with open(record_path + '.tmp', 'w') as f:
        json.dump(record, f, indent=1, sort_keys=True)
    os.replace(record_path + '.tmp', record_path)
    print(
        '%s: dense test error %.2f %% moving, %.2f %% precise, %.1f min'
        % (
            name,
            100 * record['error_dense_moving'],
            100 * record['error_dense_precise'],
            record['minutes'],
        ),
        flush=True,
    )
    if args.commit_records:
        with COMMIT_LOCK:
            subprocess.run(['git', '-C', ROOT, 'add', record_path], check=True)
            subprocess.run(
                [
                    'git',
                    '-C',
                    ROOT,
                    'commit',
                    '-q',
                    '-m',
                    'Fashion-MNIST table, round 2: run %s' % name,
                ],
                check=True,
            )
    return record


# ------------------------------------------------------------------ report


def summarize(records: Dict[Run, dict]) -> List[dict]:
    """Per cell and mode, the paired gain with both statistics."""
    rows = []
    for cell in CELLS:
        base = cell_by_name(CONFIRMS.get(cell.name, cell.name))
        for mode in cell.modes:
            row = {
                'cell': cell.name,
                'width': cell.width,
                'labels': cell.labels,
                'steps': cell.steps,
                'mode': mode,
                'role': cell.role,
                'primary': (cell.name, mode) == PRIMARY,
            }
            for statistic in ('moving', 'precise'):
                row[statistic] = paired(cell, mode, records, statistic)
            if cell.name in CONFIRMS:  # the pooled comparison of the confirmed cell
                row['pooled'] = paired(base, mode, records, 'moving', base.seeds + cell.seeds)
            if row['moving']['seeds']:
                rows.append(row)
    return rows


def gain_text(c: dict) -> str:
    if 'mean' in c:
        return '%+.2f ± %.2f [%+.2f, %+.2f]' % (
            c['mean'],
            c['se'],
            c['interval'][0],
            c['interval'][1],
        )
    return '%+.2f (one seed)' % c['gains'][0] if c['gains'] else '–'


def markdown(rows: List[dict], records: Dict[Run, dict]) -> str:
    mean = lambda values: '%.2f' % statistics.mean(values) if values else '–'  # noqa: E731
    lines = [
        (
            '| cell | width | labels | steps | mode | seeds | supervised % (moving / precise) '
            '| self % (moving / precise) | gain, moving: mean ± SE [95 %] | verdict (moving) '
            '| gain, precise: mean ± SE [95 %] | verdict (precise) |'
        ),
        '|---|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for r in rows:
        m, p = r['moving'], r['precise']
        lines.append(
            '| %s%s | %g | %d | %d | %s | %s | %s / %s | %s / %s | %s | %s | %s | %s |'
            % (
                r['cell'],
                ' (primary)' if r['primary'] else '',
                r['width'],
                r['labels'],
                r['steps'],
                r['mode'],
                ','.join(map(str, m['seeds'])),
                mean(m['supervised']),
                mean(p['supervised']),
                mean(m['self']),
                mean(p['self']),
                gain_text(m),
                verdict(m),
                gain_text(p),
                verdict(p),
            )
        )
        if 'pooled' in r:
            lines.append(
                '| %s pooled | | | | %s | %s | | | %s | %s | | |'
                % (
                    CONFIRMS[r['cell']],
                    r['mode'],
                    ','.join(map(str, r['pooled']['seeds'])),
                    gain_text(r['pooled']),
                    verdict(r['pooled']),
                )
            )
    lines += [
        '',
        (
            '| run | dense % moving | dense % precise | single % moving | single % precise '
            '| minutes | CPU | commit |'
        ),
        '|---|---|---|---|---|---|---|---|',
    ]
    for run in sorted(records):
        r = records[run]
        lines.append(
            '| %s | %.2f | %.2f | %.2f | %.2f | %.1f | %s | %s |'
            % (
                run_name(run),
                100 * r['error_dense_moving'],
                100 * r['error_dense_precise'],
                100 * r['error_single_moving'],
                100 * r['error_single_precise'],
                r['minutes'],
                r['cpu'],
                r['commit'][:10],
            )
        )
    return '\n'.join(lines) + '\n'


def plot(rows: List[dict], path: str) -> None:
    """Each comparison's gain per seed (dots) and mean with the 95 % interval, for both
    statistics side by side."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4.5))
    for i, r in enumerate(rows):
        for offset, statistic, color in (
            (-0.15, 'moving', 'tab:blue'),
            (0.15, 'precise', 'tab:orange'),
        ):
            c = r[statistic]
            ax.plot([i + offset] * len(c['gains']), c['gains'], 'o', color=color, alpha=0.4)
            if 'mean' in c:
                low, high = c['interval']
                ax.errorbar(
                    [i + offset],
                    [c['mean']],
                    yerr=[[c['mean'] - low], [high - c['mean']]],
                    fmt='s',
                    color=color,
                    capsize=4,
                    label=statistic + ' statistics' if i == 0 else None,
                )
    ax.axhline(0, color='black', linewidth=0.8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(
        [
            '%s%s\nw%g %d labels\n%s %d steps'
            % (
                r['cell'],
                ' (primary)' if r['primary'] else '',
                r['width'],
                r['labels'],
                r['mode'],
                r['steps'],
            )
            for r in rows
        ],
        fontsize=7,
    )
    ax.set_ylabel('gain: supervised − self-supervised\ndense test error (points)')
    ax.set_title('Fashion-MNIST, round 2: paired gain per seed, mean and 95 % interval')
    ax.grid(axis='y', alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path + '.tmp.png', dpi=110)
    os.replace(path + '.tmp.png', path)


def report() -> str:
    """Rewrites docs/fashion_table2.{json,md,png} from the records; returns the markdown."""
    with REPORT_LOCK:
        records = published_records()
        rows = summarize(records)
        cell, gain = demo_cell(records)
        primary = next((r for r in rows if r['primary']), None)
        summary = {
            'rows': rows,
            'primary': PRIMARY,
            'primary_verdict': verdict(primary['moving']) if primary else 'not run',
            'demo': {
                'cell': cell,
                'gain_shown': gain,
                'decided': qualifies('A', records) is not None,
            },
            'runs': [records[run] for run in sorted(records)],
        }
        with open(PUBLISHED + '.json.tmp', 'w') as f:
            json.dump(summary, f, indent=1)
        os.replace(PUBLISHED + '.json.tmp', PUBLISHED + '.json')
        text = markdown(rows, records)
        with open(PUBLISHED + '.md', 'w') as f:
            f.write(text)
        if rows:
            plot(rows, PUBLISHED + '.png')
        return text


def make_parser() -> argparse.ArgumentParser:
    """The script's flags, built apart from main() so that tests/test_docs.py can check
    the command lines the documentation quotes against them."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--workers', type=int, default=2, help='runs at a time (default 2)')
    parser.add_argument('--threads', type=int, default=1, help='cores of each run (default 1)')
    parser.add_argument('--dataset', default=FASHION_DIR, help='Fashion-MNIST folder')
    parser.add_argument(
        '--result',
        default=os.path.join(ROOT, 'results', 'table2'),
        help='where the runs train (default results/table2)',
    )
    parser.add_argument(
        '--commit',
        dest='commit_records',
        action='store_true',
        help="commit each finished run's record",
    )
    parser.add_argument('--report', action='store_true', help='only rewrite the report')
    return parser


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    args.commit, args.cpu = code_commit(), host_cpu()
    if not args.report:
        # Cells are taken in order; each time one finishes, the rules decide the next.
        for cell in CELLS:
            if not due(cell, published_records()):
                continue
            todo = [run for run in cell_runs(cell) if run not in published_records()]
            with ThreadPoolExecutor(args.workers) as pool:
                for _ in pool.map(lambda run: (train(args, run), report()), todo):
                    pass
    print(report())
    return 0


if __name__ == '__main__':
    sys.exit(main())
