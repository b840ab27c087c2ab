"""The sweep behind the demo's default setting: for each (labels, mode) point
trains the self-supervised run and the supervised baseline on Fashion-MNIST
with the same seed and step budget, and prints a table of dense test errors.

    .venv/bin/python bench/demo_sweep.py --points 100:asl 100:sesemi 500:asl --seeds 0
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import demo  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--points', nargs='+', default=['100:asl', '100:sesemi', '500:asl'],
                        help='labels:mode pairs')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0])
    parser.add_argument('--steps', type=int, default=240)
    parser.add_argument('--width', type=float, default=0.125)
    parser.add_argument('--result', default=os.path.join('results', 'sweep'))
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        for point in args.points:
            labels, mode = point.split(':')
            runs = []
            for run_mode in (mode, 'supervised'):
                folder = os.path.join(args.result, 'l%s_s%d_w%g_n%d' % (labels, seed, args.width, args.steps))
                demo_args = demo.parse_args(['--labels', labels, '--mode', mode, '--seed', str(seed),
                                             '--steps', str(args.steps), '--width', str(args.width),
                                             '--evaluations', '1', '--result', folder])
                done = os.path.join(folder, run_mode, 'result.json')
                if os.path.exists(done):  # the baseline is shared by points with the same labels
                    with open(done) as f:
                        runs.append({'mode': run_mode, 'final': json.load(f), 'minutes': float('nan')})
                else:
                    runs.append(demo.train(demo_args, run_mode))
            rows.append((labels, mode, seed, runs))
            print('\n'.join('SWEEP labels=%s mode=%s seed=%d %s=%.4f (%.1f min)' % (
                labels, mode, seed, r['mode'], r['final']['error_dense'], r['minutes']) for r in runs),
                flush=True)
    print('\n%-7s %-7s %5s %6s %12s %12s %8s' % ('labels', 'mode', 'seed', 'steps', 'self error',
                                                'supervised', 'gain'))
    for labels, mode, seed, (own, base) in rows:
        print('%-7s %-7s %5d %6d %11.2f%% %11.2f%% %+7.2f' % (
            labels, mode, seed, args.steps, 100 * own['final']['error_dense'],
            100 * base['final']['error_dense'],
            100 * (base['final']['error_dense'] - own['final']['error_dense'])))
    return 0


if __name__ == '__main__':
    sys.exit(main())
