"""Every command line the documentation quotes (README.md, docs/*.md) parses with the flags of
the tool it runs.

Command lines are taken from fenced code blocks and from inline code spans that start with a
command; each is parsed with its tool's own flag definitions (the absl FlagValues the tool
fills, its argparse parser, or the flag handling of the launch scripts in test/), never from
--help output, so a flag renamed or removed in the code, or a value of the wrong type, fails
here instead of on a reader's machine. Only flag names and value types are checked:
placeholder values (FOLDER, results/...) are fine. Nothing is run and TensorFlow is not
imported.
"""

import glob
import importlib.util
import os
import re
import shlex
import sys
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import pytest
from absl import flags
from conftest import ROOT

import boot_modelarts
import demo
import evaluate
import export
import predict
from sesemi_tf import arguments, cli

DOCS = ['README.md'] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'docs', '*.md'))
)
INTERPRETERS = (
    'python',
    'python3',
    '.venv/bin/python',
    '.venv-tf1/bin/python',
    '.venv-gpu/bin/python',
)
# Commands that run no tool of this project; `sudo` is dropped and what follows it classified.
EXEMPT = ('make', 'apt-get', 'pip', '.venv/bin/pip', 'tensorboard', 'source', 'git', 'cd', 'export')
ENV_ASSIGNMENT = re.compile(r'[A-Za-z_][A-Za-z0-9_]*=')
SEPARATORS = ('&&', '||', ';', '|')
# Enough that a broken extraction cannot pass by finding nothing; the docs quote about 60.
MIN_CHECKED = 20

# The flags test/common.sh consumes itself (each as --name=value); every other --flag goes to
# the training entry. test_launch_script_flags_match_common_sh keeps this list honest.
LAUNCH_FLAGS = (
    'data_path',
    'precision_mode',
    'over_dump',
    'data_dump_flag',
    'data_dump_step',
    'profiling',
)
# Flags the 8-device scripts set per device and refuse from the caller (test/common.sh).
REFUSED_8P = ('result', 'ckpt_path', 'distribute', 'device')


class DocError(Exception):
    """A quoted command line that its tool would refuse."""


class Command(NamedTuple):
    """One quoted command line: where it is, and its text (continuations joined)."""

    path: str
    line: int
    text: str

    def __str__(self):
        return '%s:%d: %s' % (self.path, self.line, self.text)


# ------------------------------------------------------------------ finding the commands


def _logical_lines(block: List[str], first: int):
    """(line number, text) of a code block's lines, backslash continuations joined."""
    text, start = '', None
    for number, line in enumerate(block, first):
        if start is None:
            start = number
        if line.rstrip().endswith('\\'):
            text += line.rstrip()[:-1] + ' '
            continue
        yield start, text + line
        text, start = '', None
    if start is not None:
        yield start, text


def find_commands(paths: Sequence[str], root: str = ROOT) -> List[Command]:
    """The command lines quoted in the Markdown files ``paths`` (relative to ``root``).

    Returns:
        Every logical line of a fenced code block, and every inline code span of two words
        or more, whose first word (after ``sudo``) is an environment assignment, an
        interpreter, ``bash``, an exempt command or a project tool; what reads as output, a
        file listing or a flag on its own is left out.
    """
    found = []
    for path in paths:
        with open(os.path.join(root, path), encoding='utf-8') as f:
            lines = f.read().split('\n')
        fenced, block, block_start, prose = False, [], 0, []
        for number, line in enumerate(lines, 1):
            if line.lstrip().startswith('```'):
                if fenced:
                    for start, text in _logical_lines(block, block_start):
                        if _command_words(text) is not None:
                            found.append(Command(path, start, text.strip()))
                    block = []
                else:
                    block_start = number + 1
                fenced = not fenced
                prose.append((number, ''))
            elif fenced:
                block.append(line)
            else:
                prose.append((number, line))
        found += _inline_commands(path, prose)
    return found


def _inline_commands(path: str, prose: List[tuple]) -> List[Command]:
    """The inline code spans of the text outside code blocks that start with a command."""
    text = '\n'.join(line for _, line in prose)
    starts = [0]
    for _, line in prose:
        starts.append(starts[-1] + len(line) + 1)
    found = []
    for match in re.finditer(r'`([^`]+)`', text):
        span = ' '.join(match.group(1).split())  # a span may run over a line break
        words = _command_words(span)
        if words is None or len(words) < 2:
            continue  # a tool or an interpreter named in a sentence, not run
        index = sum(1 for s in starts if s <= match.start()) - 1
        found.append(Command(path, prose[index][0], span))
    return found


def _command_words(text: str) -> Optional[List[str]]:
    """The whitespace-separated words of ``text`` from its command on, or None when its
    first word is not one (output, a file listing, a flag on its own)."""
    words = text.split()
    if words and words[0] == 'sudo':
        words = words[1:]
    if not words:
        return None
    if ENV_ASSIGNMENT.match(words[0]):
        return words  # VAR=value [command ...]: the shell split in check() decides what runs
    if words[0] in INTERPRETERS + EXEMPT + ('bash',) or _tool_path(words[0]):
        return words
    return None


def _tool_path(word: str) -> bool:
    """Whether ``word`` names a tool of this project (it need not exist: a removed one fails)."""
    word = os.path.normpath(word)
    return (
        word in TOOLS
        or (word.startswith('bench' + os.sep) and word.endswith('.py'))
        or (word.startswith('test' + os.sep) and word.endswith('.sh'))
    )


# ------------------------------------------------------------------ checking one command


def check(command: Command) -> bool:
    """Parses ``command`` with the flags of the tool it runs.

    Returns:
        True when it runs a tool of this project and parses; False when it runs no tool of
        this project (make, pip, git, ``python -c``, ...).

    Raises:
        DocError: the tool would refuse the command line.
    """
    try:
        tokens = shlex.split(command.text, comments=True)
    except ValueError as err:
        raise DocError('cannot be split as a shell command: %s' % err) from err
    checked = False
    commands, current = [], []
    for token in tokens:
        if token in SEPARATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    for words in commands:
        checked = _check_words(_unbracket(words)) or checked
    return checked


def _unbracket(words: List[str]) -> List[str]:
    """Optional parts written as ``[--flag value]`` become plain arguments."""
    out = []
    for word in words:
        start = 1 if word.startswith('[-') else 0
        end = -1 if word.endswith(']') and '[' not in word else len(word)
        out.append(word[start:end])
    return out


def _check_words(words: List[str]) -> bool:
    """Checks one command of a line (``a && b`` holds two); True when it ran a tool."""
    while words and (ENV_ASSIGNMENT.match(words[0]) or words[0] == 'sudo'):
        words = words[1:]
    if not words or words[0] in EXEMPT:
        return False
    if words[0] in INTERPRETERS:
        if len(words) < 2 or words[1].startswith('-'):
            return False  # python -c ..., python -m ...: no tool of this project
        words = words[1:]
    elif words[0] == 'bash':
        if len(words) < 2:
            raise DocError('bash without a script')
        words = words[1:]
    elif not _tool_path(words[0]):
        return False
    run_tool(os.path.normpath(words[0]), words[1:])
    return True


def run_tool(tool: str, args: List[str]) -> None:
    """Parses ``args`` as the command line of ``tool`` (a path relative to the repository).

    Raises:
        DocError: the tool would refuse them, or does not exist.
    """
    if tool in TOOLS:
        TOOLS[tool](args)
    elif tool.startswith('bench' + os.sep) and tool.endswith('.py'):
        parse_bench(tool, args)
    elif tool in LAUNCH_SCRIPTS:
        LAUNCH_SCRIPTS[tool](tool, args)
    else:
        raise DocError('%s is not a tool of this project' % tool)


def _parse_absl(
    define: Callable[[flags.FlagValues], None],
    args: List[str],
    positional: bool = False,
    may_omit: Sequence[str] = (),
) -> None:
    """Parses ``args`` with the FlagValues ``define`` fills, as ``sesemi_tf.cli.parse_flags``
    does (plus its --verbose); required flags named in ``may_omit`` get a placeholder first."""
    if any(arg in cli.HELP_ARGS for arg in args):
        return  # the tool prints its help and exits 0 before parsing
    fv = flags.FlagValues()
    define(fv)
    flags.DEFINE_boolean('verbose', False, 'As sesemi_tf.cli.parse_flags.', flag_values=fv)
    placeholders = ['--%s=%s' % (name, name.upper()) for name in may_omit]
    try:
        rest = fv(['tool'] + placeholders + list(args))
    except flags.Error as err:
        raise DocError(str(err).splitlines()[0]) from err
    if rest[1:] and not positional:
        raise DocError('unexpected argument %s; the tool takes flags only' % rest[1])


def _parse_argparse(parse: Callable[[List[str]], object], args: List[str]):
    """``parse(args)``; an argparse exit other than --help's is a refusal."""
    if any(arg in ('-h', '--help') for arg in args):
        return None  # argparse prints the help and exits 0
    try:
        return parse(list(args))
    except SystemExit as err:
        if err.code in (0, None):
            return None
        raise DocError('argparse refused it (exit code %s)' % err.code) from err


def parse_entry(args: List[str]) -> None:
    """The training entry's flags (``sesemi_tf.arguments.define_flags``)."""
    _parse_absl(arguments.define_flags, args)


def parse_boot_modelarts(args: List[str]) -> None:
    """boot_modelarts.py's flags; the rest go to the launch script it runs."""
    parsed = _parse_argparse(boot_modelarts.parse_args, args)
    if parsed is None:
        return
    known, extra = parsed
    script = os.path.join('test', 'train_%s_1p.sh' % known.script)
    parse_launch_script(script, ['--data_path=' + known.data_cache] + list(extra))


def parse_launch_script(script: str, args: List[str]) -> None:
    """A ModelZoo launch script's command line, split as test/common.sh splits it."""
    if any(arg in ('-h', '--help') for arg in args):
        return
    given, forwarded = {}, []
    for arg in args:
        name, equals, value = arg[2:].partition('=')
        if arg.startswith('--') and name in LAUNCH_FLAGS:
            if not equals or not value:
                raise DocError('%s needs a value (--%s=VALUE)' % (arg, name))
            given[name] = value
        elif arg.startswith('--') and len(arg) > 2:
            forwarded.append(arg)
        else:
            raise DocError("unexpected argument '%s'; flags take the form --name=value" % arg)
    if 'data_path' not in given:
        raise DocError('--data_path is required')
    entry = ['--dataset=' + given.pop('data_path')]
    entry += ['--%s=%s' % item for item in sorted(given.items())]
    if script.endswith('_8p.sh'):
        for name in REFUSED_8P:
            if any(a in ('--' + name, '--no' + name) or a.startswith('--%s=' % name) for a in args):
                raise DocError('--%s cannot be given to %s' % (name, script))
        entry += ['--distribute=npu', '--device=npu']
    parse_entry(entry + forwarded)


def parse_multi_worker(script: str, args: List[str]) -> None:
    """test/train_multi_worker.sh: --workers=N for itself, the rest for the training entry."""
    if any(arg in ('-h', '--help') for arg in args):
        return
    forwarded = []
    for arg in args:
        if arg.startswith('--workers='):
            if not re.match(r'^[1-9][0-9]*$', arg.split('=', 1)[1]):
                raise DocError('--workers must be a whole number from 1, got %s' % arg)
        elif arg == '--distribute' or arg.startswith('--distribute='):
            raise DocError('%s: the script trains with --distribute=multi_worker' % arg)
        elif arg.startswith('--') and len(arg) > 2:
            forwarded.append(arg)
        else:
            raise DocError("unexpected argument '%s'; flags take the form --name=value" % arg)
    parse_entry(['--distribute=multi_worker'] + forwarded)


_BENCH: Dict[str, object] = {}


def parse_bench(tool: str, args: List[str]) -> None:
    """A bench/ script's flags, from its ``make_parser()``; TensorFlow must stay unloaded."""
    path = os.path.join(ROOT, tool)
    if not os.path.isfile(path):
        raise DocError('%s does not exist' % tool)
    if tool not in _BENCH:
        had_tensorflow = 'tensorflow' in sys.modules
        spec = importlib.util.spec_from_file_location('bench_' + os.path.basename(tool)[:-3], path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert had_tensorflow or 'tensorflow' not in sys.modules, (
            '%s loads TensorFlow when imported; import it where it runs' % tool
        )
        if not hasattr(module, 'make_parser'):
            raise DocError('%s has no make_parser() to check its flags with' % tool)
        _BENCH[tool] = module
    parser = _BENCH[tool].make_parser()
    # make_folder_dataset.py's --output may be left out where the docs name its other flags.
    omit = ['--output=OUTPUT'] if tool == os.path.join('bench', 'make_folder_dataset.py') else []
    _parse_argparse(parser.parse_args, omit + list(args))


TOOLS: Dict[str, Callable[[List[str]], None]] = {
    'train_evaluate_asl2.py': parse_entry,
    # evaluate.py is named with one flag (--precise_bn=200) in docs/fashion-table.md: --model,
    # which it requires, may be left out of a quote.
    'evaluate.py': lambda args: _parse_absl(evaluate.define_flags, args, may_omit=('model',)),
    'predict.py': lambda args: _parse_absl(predict.define_flags, args, positional=True),
    'export.py': lambda args: _parse_absl(export.define_flags, args),
    'demo.py': lambda args: _parse_argparse(demo.parse_args, args),
    'boot_modelarts.py': parse_boot_modelarts,
}
LAUNCH_SCRIPTS: Dict[str, Callable[[str, List[str]], None]] = {
    os.path.join('test', name): parse_launch_script
    for name in (
        'train_full_1p.sh',
        'train_performance_1p.sh',
        'train_full_8p.sh',
        'train_performance_8p.sh',
    )
}
LAUNCH_SCRIPTS[os.path.join('test', 'train_multi_worker.sh')] = parse_multi_worker

COMMANDS = find_commands(DOCS)


def _ids(commands: Sequence[Command]) -> List[str]:
    """path:line, and the command's rank when a line quotes several (a table cell)."""
    ids, seen = [], {}
    for command in commands:
        key = '%s:%d' % (command.path, command.line)
        seen[key] = seen.get(key, 0) + 1
        ids.append(key if seen[key] == 1 else '%s(%d)' % (key, seen[key]))
    return ids


# ------------------------------------------------------------------ the tests


@pytest.mark.parametrize('command', COMMANDS, ids=_ids(COMMANDS))
def test_the_quoted_command_line_parses(command):
    try:
        check(command)
    except DocError as err:
        pytest.fail('%s\n  %s' % (command, err))


def _runs_a_tool(command: Command) -> bool:
    """Whether ``command`` runs a tool of this project (parsing or not: that is the other test)."""
    try:
        return check(command)
    except DocError:
        return True


def test_the_docs_quote_enough_command_lines_of_the_tools():
    checked = [c for c in COMMANDS if _runs_a_tool(c)]
    assert len(checked) >= MIN_CHECKED, 'only %d command lines checked in %s' % (
        len(checked),
        ', '.join(DOCS),
    )


def test_every_launch_script_and_docs_page_is_known():
    scripts = {
        os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'test', 'train_*.sh'))
    }
    assert scripts == set(LAUNCH_SCRIPTS)
    assert len(DOCS) > 1


def test_launch_script_flags_match_common_sh():
    with open(os.path.join(ROOT, 'test', 'common.sh')) as f:
        text = f.read()
    consumed = re.search(r'^\s*(--data_path=\*(?:\|--\w+=\*)*)\)', text, re.M)
    assert consumed, 'the case pattern of the flags common.sh consumes has moved'
    assert tuple(re.findall(r'--(\w+)=\*', consumed.group(1))) == LAUNCH_FLAGS
    refused = re.search(r'for name in ([\w ]+); do\n\s*sesemi_caller_gave "\$name"', text)
    assert refused, "the 8p scripts' refused flags have moved"
    assert tuple(refused.group(1).split()) == REFUSED_8P


def _one(tmp_path, markdown):
    (tmp_path / 'README.md').write_text(markdown)
    commands = find_commands(['README.md'], root=str(tmp_path))
    assert len(commands) == 1, commands
    return commands[0]


@pytest.mark.parametrize(
    'line, words',
    [
        ('`.venv/bin/python train_evaluate_asl2.py --data=cifar10 --lables=1000`', 'lables'),
        ('`python train_evaluate_asl2.py --labels=many`', 'labels'),
        ('`bash test/train_full_1p.sh --data_path=/data --epoch=1`', 'epoch'),
        ('`bash test/train_full_1p.sh --epochs=1`', 'data_path'),
        ('`RANK_TABLE_FILE=t.json bash test/train_full_8p.sh --data_path=/d --result=r`', 'result'),
        ('`bash test/train_multi_worker.sh --workers=two`', 'workers'),
        ('`python evaluate.py --model=m.h5 --precise=3`', 'precise'),
        ('`python export.py --model=m.h5 extra`', 'extra'),
        ('`python demo.py --seeds=1`', 'argparse'),
        ('`python boot_modelarts.py --data_url=a --train_url=b --epoch=1`', 'epoch'),
        ('`python bench/step.py --modelz=nin:1`', 'argparse'),
        ('`python bench/no_such_bench.py --x=1`', 'exist'),
        ('`python gone.py --x=1`', 'not a tool'),
    ],
)
def test_a_quoted_command_with_a_wrong_flag_fails(tmp_path, capsys, line, words):
    command = _one(tmp_path, 'Run %s to train.\n' % line)
    with pytest.raises(DocError, match=words):
        check(command)
    capsys.readouterr()  # argparse's own message


def test_a_made_up_readme_block_with_a_bogus_flag_fails(tmp_path):
    (tmp_path / 'README.md').write_text(
        '# Title\n\n```bash\nsource test/malloc.sh   # exempt\n'
        'SESEMI_VERBOSE=1 .venv/bin/python train_evaluate_asl2.py --data=folder \\\n'
        '    --dataset=FOLDER --bogus_flag=1   # a comment\n```\n\noutput line\n'
    )
    exempt, command = find_commands(['README.md'], root=str(tmp_path))
    assert not check(exempt)
    assert command.line == 5 and command.text.endswith('# a comment')
    with pytest.raises(DocError, match='bogus_flag'):
        check(command)


def test_continuations_comments_env_and_placeholders_parse(tmp_path):
    markdown = (
        '```bash\n'
        'TF_CONFIG=\'{"task": {"index": 0}}\' \\\n'
        '    python train_evaluate_asl2.py --data=cifar10 --distribute=multi_worker  # ok\n'
        'make demo DEMO_ARGS=--dataset=FOLDER\n'
        'photos/labeled/cat/img001.jpg      photos/unlabeled/x.png\n'
        '```\n'
        'Also `.venv/bin/python bench/profile_step.py --width 1.0 [--precision mixed]`, '
        '`bench/replicas.py` and `--labels=N`.\n'
    )
    (tmp_path / 'README.md').write_text(markdown)
    commands = find_commands(['README.md'], root=str(tmp_path))
    assert [c.line for c in commands] == [2, 4, 7]
    assert [check(c) for c in commands] == [True, False, True]
