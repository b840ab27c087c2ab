"""Helpers of boot_modelarts.py: copying to and from OBS, and running a launch script.

On ModelArts the data and result URLs are OBS paths (obs://bucket/...), copied with
the ``moxing`` SDK that the platform provides. Where ``moxing`` cannot be imported
(any machine but ModelArts) the URLs must be local folders and plain file copies
are used, so a ModelArts job can be rehearsed locally. ``moxing`` is imported here
only, lazily, inside the copy functions.
"""

import os
import shutil
import subprocess
from typing import List, Optional

ROOT = os.path.dirname(os.path.abspath(__file__))

# What is uploaded from the device's output folder: the result folder, the dump and
# profiling folders the launch scripts create when asked, and every log file.
UPLOAD_FOLDERS = ('result', 'overflow_dump', 'data_dump', 'profiling')
UPLOAD_SUFFIX = '.log'


class CopyError(Exception):
    """A copy to or from OBS (or a local folder) failed."""


def load_moxing():
    """The ``moxing`` module when the platform provides it, else None."""
    try:
        import moxing  # noqa: F401  (ModelArts only)
    except ImportError:
        return None
    return moxing


def _copy_local_tree(src: str, dst: str) -> None:
    """Copies the contents of folder ``src`` into ``dst``, merging with what is there
    (``shutil.copytree`` of Python 3.7 refuses an existing destination)."""
    os.makedirs(dst, exist_ok=True)
    for name in sorted(os.listdir(src)):
        source, target = os.path.join(src, name), os.path.join(dst, name)
        if os.path.isdir(source):
            _copy_local_tree(source, target)
        else:
            shutil.copy2(source, target)


def copy_folder(src: str, dst: str) -> None:
    """Copies the contents of folder ``src`` into folder ``dst``.

    Args:
        src: an OBS URL or a local folder.
        dst: an OBS URL or a local folder (created if missing).

    Raises:
        CopyError: ``src`` is missing or the copy failed; the message names both ends.
    """
    mox = load_moxing()
    try:
        if mox is not None:
            mox.file.copy_parallel(src, dst)
            return
        if '://' in src or '://' in dst:
            raise CopyError(
                '%s is a URL but the moxing SDK is not installed; outside '
                'ModelArts give local folders' % (src if '://' in src else dst)
            )
        if not os.path.isdir(src):
            raise CopyError('%s is not a folder' % src)
        inside = os.path.relpath(os.path.realpath(dst), os.path.realpath(src))
        if inside == os.curdir or not inside.startswith(os.pardir):
            raise CopyError('the destination lies inside the source')
        _copy_local_tree(src, dst)
    except CopyError as err:
        raise CopyError('cannot copy %s to %s: %s' % (src, dst, err)) from err
    # What a failed copy raises: OSError (shutil and local files, and the OBS client's
    # network errors), and RuntimeError or ValueError, which moxing's own errors are
    # built on; anything else is a bug and keeps its traceback.
    except (OSError, RuntimeError, ValueError) as err:
        raise CopyError(
            'cannot copy %s to %s: %s: %s' % (src, dst, type(err).__name__, err)
        ) from err


def stage_outputs(output_dir: str, stage_dir: str) -> List[str]:
    """Copies what is worth uploading from a device's output folder to ``stage_dir``.

    Args:
        output_dir: test/output/<device> of a launch-script run.
        stage_dir: local folder to gather the upload in; emptied first.

    Returns:
        The names copied (log files, then folders), sorted.

    Raises:
        CopyError: ``output_dir`` does not exist or a local copy failed.
    """
    if not os.path.isdir(output_dir):
        raise CopyError('the launch script left no output folder %s' % output_dir)
    try:
        if os.path.isdir(stage_dir):
            shutil.rmtree(stage_dir)
        os.makedirs(stage_dir)
        names = sorted(os.listdir(output_dir))
        logs = [
            n
            for n in names
            if n.endswith(UPLOAD_SUFFIX) and os.path.isfile(os.path.join(output_dir, n))
        ]
        folders = [n for n in UPLOAD_FOLDERS if os.path.isdir(os.path.join(output_dir, n))]
        for name in logs:
            shutil.copy2(os.path.join(output_dir, name), os.path.join(stage_dir, name))
        for name in folders:
            _copy_local_tree(os.path.join(output_dir, name), os.path.join(stage_dir, name))
    except OSError as err:
        raise CopyError('cannot gather %s in %s: %s' % (output_dir, stage_dir, err)) from err
    return logs + folders


def output_root() -> str:
    """The launch scripts' output root: $OUTPUT_ROOT (made absolute) or test/output."""
    return os.path.abspath(os.environ.get('OUTPUT_ROOT') or os.path.join(ROOT, 'test', 'output'))


def device_id() -> str:
    """The Ascend device the launch scripts train on ($ASCEND_DEVICE_ID, default 0)."""
    return os.environ.get('ASCEND_DEVICE_ID') or '0'


def run_launch_script(
    script: str, data_path: str, extra_args: List[str], env: Optional[dict] = None
) -> int:
    """Runs ``bash test/train_<script>_1p.sh --data_path=<data_path> <extra_args>``.

    Args:
        script: ``full`` or ``performance``.
        data_path: the local dataset folder.
        extra_args: flags passed on to the launch script unchanged.
        env: the script's environment (default: this process's).

    Returns:
        The script's exit code.
    """
    path = os.path.join(ROOT, 'test', 'train_%s_1p.sh' % script)
    command = ['bash', path, '--data_path=' + data_path] + list(extra_args)
    print('Running: %s' % ' '.join(command), flush=True)
    return subprocess.call(command, cwd=ROOT, env=env)
