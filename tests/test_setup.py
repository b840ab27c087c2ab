"""The install paths: what `make setup` and `make setup-gpu` would run, and the GPU pins.

The GPU wheels (several GB) are not installed here; `make -n` shows the commands.
"""

import os
import re
import shutil
import subprocess

import pytest
from conftest import ROOT

# name[extras] (specifier)? (; marker)?
REQUIREMENT = re.compile(r'^([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*([<>=!~][^;]*?)?\s*(?:;\s*(.*))?$')
TF2_MARKER = 'python_version >= "3.9"'


def requirements(name):
    """{package: (extras, pinned version or None, marker or None)} of a requirements file;
    a version range (e.g. ``<3.21``) counts as not pinned."""
    found = {}
    with open(os.path.join(ROOT, name)) as f:
        for text in f:
            line = text.split('#')[0].strip()
            if line:
                match = REQUIREMENT.match(line)
                assert match, 'unparsed line in %s: %s' % (name, line)
                package, extras, specifier, marker = match.groups()
                pinned = re.match(r'^==\s*([^,*\s]+)$', specifier or '')
                found[package.lower()] = (extras or '', pinned and pinned.group(1), marker)
    return found


def make_dry_run(*args):
    """What make would run for ``args`` (-B: as if nothing were built yet)."""
    if not shutil.which('make'):
        pytest.skip('make is not installed')
    proc = subprocess.run(
        ['make', '-n', '-B'] + list(args),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_setup_gpu_builds_its_own_venv_from_the_gpu_requirements():
    commands = make_dry_run('setup-gpu')
    assert 'python3.11 -m venv .venv-gpu\n' in commands
    assert (
        '.venv-gpu/bin/pip install -q -r requirements-gpu.txt -r requirements-dev.txt\n' in commands
    )
    assert 'requirements.txt' not in commands.replace('-gpu.txt', '').replace('-dev.txt', '')
    assert not re.search(r'(^|\s)\.venv/', commands)  # the CPU venv is left alone


def test_cpu_setup_is_unchanged_by_the_gpu_path():
    commands = make_dry_run('setup')
    for venv in ('.venv', '.venv-tf1'):
        assert 'rm -rf %s\n' % venv in commands  # built afresh: nothing of an earlier install stays
        assert (
            '%s/bin/pip install -q -r requirements.txt -r requirements-dev.txt -c '
            'requirements-lock.txt\n' % venv
        ) in commands
    assert '.venv-gpu' not in commands and 'requirements-gpu.txt' not in commands


@pytest.mark.parametrize('target', ['test-tf2', 'demo'])
def test_venv_variable_picks_the_gpu_venv(target):
    program = {'test-tf2': '/bin/python -m pytest', 'demo': '/bin/python demo.py'}[target]
    assert '.venv' + program in make_dry_run(target)
    gpu = make_dry_run(target, 'VENV=.venv-gpu')
    assert '.venv-gpu' + program in gpu and '.venv' + program not in gpu
    assert '.venv-gpu/bin/pip install -q -r requirements-gpu.txt' in gpu


def test_gpu_requirements_pin_every_package_exactly():
    gpu = requirements('requirements-gpu.txt')
    unpinned = [name for name, (_, version, _) in gpu.items() if version is None]
    assert not unpinned
    assert gpu['tensorflow'][:2] == ('[and-cuda]', '2.21.0')
    assert 'tensorflow-cpu' not in gpu  # it would overwrite the GPU build's files
    assert all(marker is None for _, _, marker in gpu.values())  # one Python: 3.11


def test_gpu_requirements_match_the_cpu_ones_apart_from_tensorflow():
    gpu = requirements('requirements-gpu.txt')
    cpu = {
        name: version
        for name, (_, version, marker) in requirements('requirements.txt').items()
        if marker in (None, TF2_MARKER) and name != 'tensorflow'
    }
    assert sorted(cpu) == sorted(
        name for name in gpu if name != 'tensorflow' and not name.startswith('nvidia-')
    )
    for name, version in cpu.items():
        assert version is None or gpu[name][1] == version, name


def test_cuda_pins_are_tensorflows_and_cuda_extra():
    importlib_metadata = pytest.importorskip('importlib.metadata')
    requirement = pytest.importorskip('packaging.requirements')
    tf_version = importlib_metadata.version('tensorflow')
    if not tf_version.startswith('2.'):
        pytest.skip('the and-cuda extra is TensorFlow 2.x metadata')
    assert tf_version == requirements('requirements-gpu.txt')['tensorflow'][1]
    extra = {}
    for text in importlib_metadata.requires('tensorflow'):
        req = requirement.Requirement(text)
        if (
            req.marker is not None
            and req.marker.evaluate({'extra': 'and-cuda'})
            and not req.marker.evaluate({'extra': ''})
        ):
            extra[req.name.lower()] = req.specifier
    gpu = requirements('requirements-gpu.txt')
    nvidia = {name: version for name, (_, version, _) in gpu.items() if name.startswith('nvidia-')}
    assert sorted(nvidia) == sorted(extra)
    for name, version in nvidia.items():
        assert extra[name].contains(version), (name, version, str(extra[name]))


def locked():
    """{(lower-cased name, marker): version} of requirements-lock.txt."""
    found = {}
    with open(os.path.join(ROOT, 'requirements-lock.txt')) as f:
        for text in f:
            line = text.split('#')[0].strip()
            if line:
                package, rest = line.split('==', 1)
                version, marker = [part.strip() for part in rest.split(';')]
                found[(package.lower().replace('_', '-'), marker)] = version
    return found


def this_marker():
    import sys

    return 'python_version < "3.8"' if sys.version_info < (3, 8) else TF2_MARKER


def installed():
    """{lower-cased name: version} of every distribution in this environment."""
    try:
        import importlib.metadata as importlib_metadata
    except ImportError:  # Python 3.7: the backport, which pytest depends on there
        import importlib_metadata
    return {
        dist.metadata['Name'].lower().replace('_', '-'): dist.version
        for dist in importlib_metadata.distributions()
    }


def test_one_tensorflow_in_this_environment():
    wheels = {'tensorflow', 'tensorflow-cpu', 'tensorflow-gpu', 'tensorflow-intel'}
    assert len(wheels & set(installed())) == 1, sorted(wheels & set(installed()))


def test_every_requirement_is_pinned_exactly():
    for name in ('requirements.txt', 'requirements-dev.txt'):
        unpinned = [n for n, (_, version, _) in requirements(name).items() if version is None]
        assert not unpinned, (name, unpinned)


def test_this_environment_holds_exactly_the_locked_packages():
    if os.environ.get('VENV', '.venv') == '.venv-gpu' or 'nvidia-cublas-cu12' in installed():
        pytest.skip('the GPU environment is pinned by requirements-gpu.txt')
    marker = this_marker()
    want = {name: version for (name, m), version in locked().items() if m == marker}
    have = {
        name: version
        for name, version in installed().items()
        if name not in ('pip', 'setuptools', 'wheel')
    }
    assert have == want
