"""Does accuracy hold in mixed bfloat16? Paired runs on Fashion-MNIST.

For each seed, trains the same setting twice with the training entry, in float32
and with ``--precision_mode=allow_mix_precision`` (mixed_bfloat16 on a TF 2 CPU),
and prints the dense test errors, their paired differences (bfloat16 − float32)
with mean ± standard error, and the ms/step of each. Finished runs are reused.

    source test/malloc.sh
    .venv/bin/python bench/precision_accuracy.py [--seeds 0,1,2] [--steps 480]
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRECISIONS = (('float32', ''), ('mixed_bfloat16', 'allow_mix_precision'))


def train(args, seed: int, name: str, mode: str) -> dict:
    """One run (or the result it left before); returns result.json plus its ms/step."""
    result = os.path.join(args.result, '%s_seed%d' % (name, seed))
    if not os.path.exists(os.path.join(result, 'result.json')):
        subprocess.run(
            [
                sys.executable,
                os.path.join(ROOT, 'train_evaluate_asl2.py'),
                '--data=fashion_mnist',
                '--dataset=' + args.dataset,
                '--network=convnet',
                '--width=%g' % args.width,
                '--labels=%d' % args.labels,
                '--mode=asl',
                '--epochs=1000',
                '--max_steps=%d' % args.steps,
                '--seed=%d' % seed,
                '--precision_mode=' + mode,
                '--result=' + result,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    with open(os.path.join(result, 'result.json')) as f:
        final = json.load(f)
    with open(os.path.join(result, 'metrics.jsonl')) as f:
        rows = [json.loads(line) for line in f]
    final['ms_per_step'] = statistics.median(r['ms_per_step'] for r in rows[1:] or rows)
    return final


def make_parser() -> argparse.ArgumentParser:
    """The script's flags, built apart from main() so that tests/test_docs.py can check
    the command lines the documentation quotes against them."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--seeds', default='0,1,2')
    parser.add_argument('--steps', type=int, default=480)
    parser.add_argument('--labels', type=int, default=500)
    parser.add_argument('--width', type=float, default=0.125)
    parser.add_argument('--dataset', default='/usr/share/datasets/fashion-mnist')
    parser.add_argument('--result', default=os.path.join('results', 'precision_accuracy'))
    return parser


def main():
    args = make_parser().parse_args()
    seeds = [int(s) for s in args.seeds.split(',')]
    print(
        'Fashion-MNIST, ConvNet width %g, %d labels, asl, %d steps; dense test error %%'
        % (args.width, args.labels, args.steps)
    )
    print('seed  float32  mixed_bfloat16  difference  ms/step float32  ms/step bfloat16')
    diffs = []
    for seed in seeds:
        runs = {name: train(args, seed, name, mode) for name, mode in PRECISIONS}
        a, b = runs['float32'], runs['mixed_bfloat16']
        diffs.append(100 * (b['error_dense'] - a['error_dense']))
        print(
            '%4d  %7.2f  %14.2f  %+10.2f  %15.0f  %16.0f'
            % (
                seed,
                100 * a['error_dense'],
                100 * b['error_dense'],
                diffs[-1],
                a['ms_per_step'],
                b['ms_per_step'],
            ),
            flush=True,
        )
    if len(diffs) > 1:
        mean = statistics.mean(diffs)
        se = statistics.stdev(diffs) / math.sqrt(len(diffs))
        print(
            'paired difference (bfloat16 - float32): %+.2f ± %.2f points (mean ± standard '
            'error, %d seeds)' % (mean, se, len(diffs))
        )


if __name__ == '__main__':
    main()
