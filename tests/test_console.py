"""What the programs print on stderr: bad input in one line before TensorFlow loads,
TensorFlow's start-up lines and warnings hidden unless --verbose, and output that
TensorFlow writes before failing to import shown all the same."""

import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT, write_fashion_mnist

from sesemi_base import compat
from sesemi_tf import cli

TINY = [
    '--data=fashion_mnist',
    '--network=convnet',
    '--width=0.0625',
    '--labels=20',
    '--batch_size=2',
    '--epochs=1',
    '--max_steps=2',
]
# A line of TensorFlow's C++ logging: absl's format (TF 2.x) or TF 1.15's own.
CPP_LOG_LINE = re.compile(r'^([IWE]\d{4} |\d{4}-\d\d-\d\d [\d:.]+: [IWE] tensorflow/)', re.M)


def python(args, **env):
    """Runs this project's Python with ``args`` in the project folder: no GPU, not
    verbose unless ``env`` (variables added to this process's environment) says so."""
    env = dict(
        {k: v for k, v in os.environ.items() if k != cli.VERBOSE_ENV},
        CUDA_VISIBLE_DEVICES='',
        **env,
    )
    return subprocess.run(
        [sys.executable] + args,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize(
    'argv,message',
    [
        (['--labels=400'], '--labels=400 is larger than the training set (40 images)'),
        (
            ['--labels=25'],
            (
                '--labels=25 must be a multiple of the 10 classes (at least one per class), '
                'or 40 for all images'
            ),
        ),
        (
            ['--labels=20', '--batch_size=21'],
            '--batch_size=21 is larger than the 20 images of the pool; lower it',
        ),
    ],
)
def test_bad_input_against_the_data_is_one_line_before_tensorflow(tmp_path, argv, message):
    data = write_fashion_mnist(str(tmp_path / 'fashion'))
    result = str(tmp_path / 'result')
    # The entry's command line, plus whether TensorFlow was imported by the time it returned.
    code = (
        'import sys, train_evaluate_asl2 as entry\n'
        'code = entry.main()\n'
        'print("tensorflow" in sys.modules)\n'
        'sys.exit(code)\n'
    )
    proc = python(
        ['-c', code, '--data=fashion_mnist', '--dataset=' + data, '--result=' + result] + argv
    )
    assert proc.returncode == 2
    assert proc.stderr == 'error: %s\n' % message
    assert proc.stdout == 'False\n'
    assert not os.path.exists(result)


def test_training_is_quiet_and_verbose_shows_tensorflow(tmp_path):
    data = write_fashion_mnist(str(tmp_path / 'fashion'))
    quiet = python(
        ['train_evaluate_asl2.py', '--dataset=' + data, '--result=' + str(tmp_path / 'quiet')]
        + TINY
    )
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert quiet.stderr == ''
    assert 'Final test error' in quiet.stdout

    verbose = python(
        [
            'train_evaluate_asl2.py',
            '--dataset=' + data,
            '--verbose',
            '--result=' + str(tmp_path / 'verbose'),
        ]
        + TINY
    )
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert CPP_LOG_LINE.search(verbose.stderr), verbose.stderr
    if compat.TF1:
        assert 'is deprecated' in verbose.stderr  # TF 1.15's deprecation notices
    else:
        assert 'saving your model as an HDF5 file' in verbose.stderr  # Keras' legacy-format note


def test_verbose_environment_variable_shows_tensorflow_start_up():
    # The start-up lines are hidden even where TensorFlow's own log level would let them out.
    quiet = python(['-c', 'import sesemi_base.compat'], TF_CPP_MIN_LOG_LEVEL='0')
    loud = python(
        ['-c', 'import sesemi_base.compat'], TF_CPP_MIN_LOG_LEVEL='0', **{cli.VERBOSE_ENV: '1'}
    )
    assert quiet.returncode == loud.returncode == 0, loud.stderr
    assert quiet.stderr == ''
    assert CPP_LOG_LINE.search(loud.stderr), loud.stderr


def test_verbose_flag_sets_the_environment_for_tensorflow(monkeypatch):
    monkeypatch.setenv(cli.VERBOSE_ENV, '0')  # restored after the test, unlike a delenv of nothing

    def define(fv):
        pass

    fv, _ = cli.parse_flags(define, ['tool'])
    assert not fv.verbose and os.environ[cli.VERBOSE_ENV] == '0'
    fv, _ = cli.parse_flags(define, ['tool', '--verbose'])
    assert fv.verbose and os.environ[cli.VERBOSE_ENV] == '1'


def test_tensorflow_output_is_shown_when_its_import_fails(tmp_path):
    fake = tmp_path / 'tensorflow'
    fake.mkdir()
    (fake / '__init__.py').write_text(
        'import os\n'
        'os.write(2, b"Could not load dynamic library libcudart.so\\n")\n'
        'raise ImportError("broken TensorFlow install")\n'
    )
    proc = python(
        ['-c', 'import sesemi_base.compat'], PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT])
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith('Could not load dynamic library libcudart.so\n'), proc.stderr
    assert 'ImportError: broken TensorFlow install' in proc.stderr


def test_stderr_set_aside_hides_shows_on_failure_and_restores(capfd):
    with compat.stderr_set_aside():
        os.write(2, b'start-up noise\n')
    os.write(2, b'a real error\n')
    assert capfd.readouterr().err == 'a real error\n'

    def failing_import():
        with compat.stderr_set_aside():
            os.write(2, b'why it failed\n')
            raise RuntimeError('import failed')

    with pytest.raises(RuntimeError):
        failing_import()
    os.write(2, b'after\n')
    assert capfd.readouterr().err == 'why it failed\nafter\n'

    with compat.stderr_set_aside(hide=False):
        os.write(2, b'verbose\n')
    assert capfd.readouterr().err == 'verbose\n'
