"""Training throughput of 1 replica against 2 on this host, through the entry:
one device (--distribute=none), MirroredStrategy over two logical CPU devices
(--distribute=mirrored --cpu_replicas=2) and two local worker processes
(--distribute=multi_worker, test/train_multi_worker.sh), the last also with
one intra-op thread per worker (TF_NUM_INTRAOP_THREADS=1) so that the two
processes do not both ask for every core.

Every case trains the same run: Fashion-MNIST, asl mode at global batch 16
(96 labeled images and 96 proxy views a step), ConvNet-13 at --width (default
1.0), float32, epochs of 10 steps; the test set is cut to its first 200 images
(the final evaluation is not what is measured). Its speed is the mean ms/step of the epochs
after the first (which traces the step), from the chief's metrics.jsonl; the
images/s are the whole step's (192 images per step over all replicas). The
cases run one after another, ``--rounds`` times in turn, so run it on an idle
machine.

    source test/malloc.sh
    .venv/bin/python bench/replicas.py [--width 1.0] [--rounds 2] [--epochs 3]
"""

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES_PER_STEP = 16 * 6 * 2  # batch 16: the labeled branch's 96 images and 96 proxy views
CASES = (
    ('1 device', 'none', {}),
    ('mirrored, 2 CPU devices', 'mirrored', {}),
    ('multi_worker, 2 processes', 'multi_worker', {}),
    ('multi_worker, 2 processes, 1 thread each', 'multi_worker', {'TF_NUM_INTRAOP_THREADS': '1'}),
)


def write_subset(source: str, target: str, n_test: int) -> str:
    """Fashion-MNIST files in ``target``: the training set of ``source`` and the first
    ``n_test`` test images."""
    sys.path.insert(0, HERE)
    from dataset.fashion_mnist import FILES, IMAGE_MAGIC, LABEL_MAGIC, _read_bytes, parse_idx

    os.makedirs(target)
    for name in FILES:
        magic = IMAGE_MAGIC if 'images' in name else LABEL_MAGIC
        array = parse_idx(_read_bytes(os.path.join(source, name)), magic)
        if name.startswith('t10k'):
            array = array[:n_test]
        header = magic.to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in array.shape)
        with gzip.open(os.path.join(target, name), 'wb') as f:
            f.write(header + array.tobytes())
    return target


def run_case(kind: str, env_extra: dict, args, work: str) -> float:
    """Trains one case; returns its mean ms/step after the first epoch."""
    result = os.path.join(work, 'run')
    shutil.rmtree(result, ignore_errors=True)
    flags = [
        '--data=fashion_mnist',
        '--dataset=' + os.path.join(work, 'fashion'),
        '--mode=asl',
        '--labels=160',
        '--batch_size=16',
        '--epochs=%d' % args.epochs,
        '--width=%g' % args.width,
        '--network=convnet',
        '--result=' + result,
        '--device=cpu',
    ]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='', **env_extra)
    if kind == 'multi_worker':
        command = ['bash', os.path.join(HERE, 'test', 'train_multi_worker.sh'), '--workers=2']
        env['OUTPUT_ROOT'] = os.path.join(work, 'logs')
    else:
        command = [
            sys.executable,
            os.path.join(HERE, 'train_evaluate_asl2.py'),
            '--distribute=' + kind,
        ]
        if kind == 'mirrored':
            command.append('--cpu_replicas=2')
    proc = subprocess.run(
        command + flags,
        cwd=HERE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if proc.returncode:
        sys.exit('case %s failed:\n%s' % (kind, proc.stdout[-3000:]))
    with open(os.path.join(result, 'metrics.jsonl')) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return statistics.mean(row['ms_per_step'] for row in rows[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--dataset', default='/usr/share/datasets/fashion-mnist')
    parser.add_argument('--width', type=float, default=1.0)
    parser.add_argument('--rounds', type=int, default=2)
    parser.add_argument('--epochs', type=int, default=3)
    args = parser.parse_args()
    times = {name: [] for name, _, _ in CASES}
    work = tempfile.mkdtemp(prefix='sesemi_replicas_')
    write_subset(args.dataset, os.path.join(work, 'fashion'), 200)
    try:
        for round_ in range(args.rounds):
            for name, kind, env_extra in CASES:
                times[name].append(run_case(kind, env_extra, args, work))
                print(
                    'round %d  %-42s %8.0f ms/step' % (round_ + 1, name, times[name][-1]),
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.mean(times[CASES[0][0]])
    print('\n| case | ms/step (each round) | images/s | vs 1 device |\n|---|---|---|---|')
    for name, _, _ in CASES:
        ms = statistics.mean(times[name])
        print(
            '| %s | %.0f (%s) | %.1f | %.2f |'
            % (
                name,
                ms,
                ', '.join('%.0f' % t for t in times[name]),
                IMAGES_PER_STEP * 1000.0 / ms,
                base / ms,
            )
        )


if __name__ == '__main__':
    main()
