r"""ModelArts entry: fetch the data, run a ModelZoo launch script, upload the outputs.

Example (a ModelArts training job whose boot file is this script):
    python boot_modelarts.py --data_url=obs://bucket/cifar-10-batches-py \
        --train_url=obs://bucket/sesemi/run1 --script=full --labels=1000

1. copies --data_url to --data_cache (moxing.file.copy_parallel on ModelArts);
2. runs ``bash test/train_<script>_1p.sh --data_path=<data_cache> <other flags>``,
   which writes test/output/$ASCEND_DEVICE_ID/ ($OUTPUT_ROOT/... when set);
3. gathers that folder's logs, result folder and dump/profiling folders in
   --result_cache/<device> and copies them to --train_url, also when training failed,
   so that the logs can be read.

Without moxing (off ModelArts) the URLs are local folders, which rehearses a job.
Any failed copy or run prints one line on stderr and ends with a non-zero exit code.
"""

import argparse
import os
import sys
from typing import List, Optional, Tuple

from help_modelarts import (
    CopyError,
    copy_folder,
    device_id,
    output_root,
    run_launch_script,
    stage_outputs,
)


def parse_args(argv: List[str]) -> Tuple[argparse.Namespace, List[str]]:
    """Parses the ModelArts flags; the flags left over are for the launch script."""
    parser = argparse.ArgumentParser(
        description='Run a SESEMI ModelZoo launch script on ModelArts. Flags not listed here '
        '(e.g. --epochs=1 --precision_mode=allow_mix_precision) are passed on to '
        'the launch script.',
        allow_abbrev=False,
    )
    parser.add_argument(
        '--data_url',
        required=True,
        help='OBS folder of the CIFAR-10 files (or of cifar-10-batches-py).',
    )
    parser.add_argument(
        '--train_url',
        required=True,
        help='OBS folder receiving the logs, the result folder and any dumps.',
    )
    parser.add_argument(
        '--data_cache',
        default='/cache/dataset',
        help='Local folder the data is copied to (default: %(default)s).',
    )
    parser.add_argument(
        '--result_cache',
        default='/cache/result',
        help='Local folder the upload is gathered in, under the device number '
        '(default: %(default)s).',
    )
    parser.add_argument(
        '--script',
        choices=('full', 'performance'),
        default='full',
        help='Launch script: test/train_full_1p.sh (accuracy) or '
        'test/train_performance_1p.sh (default: %(default)s).',
    )
    return parser.parse_known_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the job; returns the exit code (the launch script's when it failed)."""
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        copy_folder(args.data_url, args.data_cache)
    except CopyError as err:
        print('error: data: %s' % err, file=sys.stderr)
        return 1
    env = dict(os.environ, OUTPUT_ROOT=output_root(), ASCEND_DEVICE_ID=device_id())
    status = run_launch_script(args.script, os.path.abspath(args.data_cache), extra, env)

    output_dir = os.path.join(env['OUTPUT_ROOT'], env['ASCEND_DEVICE_ID'])
    stage_dir = os.path.join(args.result_cache, env['ASCEND_DEVICE_ID'])
    try:
        names = stage_outputs(output_dir, stage_dir)
        copy_folder(stage_dir, args.train_url)
    except CopyError as err:
        print('error: outputs: %s' % err, file=sys.stderr)
        return status or 1
    print('Copied %s to %s' % (', '.join(names) or 'nothing', args.train_url))
    if status:
        print(
            'error: test/train_%s_1p.sh failed with exit code %d; its logs are in %s'
            % (args.script, status, args.train_url),
            file=sys.stderr,
        )
    return status


if __name__ == '__main__':
    sys.exit(main())
