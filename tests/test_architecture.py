"""The import structure that import-linter cannot see (it reads packages, and these
are single-file modules): utils.py is the numpy method, the entry points and tools
sit on top and nothing below imports them, none of them loads TensorFlow when
imported, and no product module outgrows one sitting's reading."""

import ast
import glob
import os
import subprocess
import sys

import pytest
from conftest import ROOT

PACKAGES = ('sesemi_tf', 'sesemi_base', 'dataset', 'networks')
TOOLS = (
    'train_evaluate_asl2',
    'evaluate',
    'predict',
    'export',
    'demo',
    'boot_modelarts',
    'help_modelarts',
)
MAX_LINES = 400


def imported(path):
    """Every module name a file imports, at module level or inside a function."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update('%s.%s' % (node.module, alias.name) for alias in node.names)
    return names


def top(name):
    return name.split('.')[0]


def product_files():
    files = [os.path.join(ROOT, 'utils.py')]
    for package in PACKAGES:
        files += glob.glob(os.path.join(ROOT, package, '*.py'))
    return sorted(files)


def test_utils_is_the_numpy_method():
    names = {top(n) for n in imported(os.path.join(ROOT, 'utils.py'))}
    assert names <= {'typing', 'numpy', 'sesemi_base'}, names
    assert {n for n in imported(os.path.join(ROOT, 'utils.py')) if top(n) == 'sesemi_base'} == {
        'sesemi_base.errors',
        'sesemi_base.errors.UsageError',
    }


@pytest.mark.parametrize('path', product_files(), ids=lambda p: os.path.relpath(p, ROOT))
def test_nothing_below_imports_an_entry_point_or_tool(path):
    assert not {top(n) for n in imported(path)} & set(TOOLS)


def test_the_base_layer_and_the_method_import_no_one_above_them():
    for package in ('sesemi_base',):
        for path in glob.glob(os.path.join(ROOT, package, '*.py')):
            names = {top(n) for n in imported(path)}
            assert not names & {'sesemi_tf', 'dataset', 'networks', 'utils'}, path
    for package in ('dataset', 'networks'):
        for path in glob.glob(os.path.join(ROOT, package, '*.py')):
            assert 'sesemi_tf' not in {top(n) for n in imported(path)}, path


@pytest.mark.parametrize('path', product_files(), ids=lambda p: os.path.relpath(p, ROOT))
def test_no_product_module_is_longer_than_one_sitting(path):
    with open(path) as f:
        assert sum(1 for _ in f) <= MAX_LINES


def test_importing_a_tool_loads_no_tensorflow():
    """Flags and input are checked before TensorFlow loads: importing the entry points
    and tools, and everything they import at module level, must not load it."""
    code = (
        'import sys; sys.path.insert(0, %r)\n'
        'import %s\n'
        'loaded = sorted(m for m in sys.modules if m.split(".")[0] in '
        '("tensorflow", "tf_keras", "keras"))\n'
        'print(loaded)' % (ROOT, ', '.join(TOOLS))
    )
    proc = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == '[]'
