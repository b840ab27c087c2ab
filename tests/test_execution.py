"""How the training step executes: XLA and steps per execution (flags, resolution,
same results), the fit phases around --max_steps, progress lines off a terminal,
and the precision as part of a run's identity."""

import json
import os

import numpy as np
import pytest
from conftest import expect_usage_error, write_noise_fashion_mnist
from test_checkpoints import load_weights, metrics, run

from sesemi_base.errors import UsageError
from sesemi_tf import checks, execution, progress
from sesemi_tf.config import AUTO_STEPS_PER_EXECUTION, RUN_DEFINING, RunConfig
from sesemi_tf.plan import Plan, fit_phases


def flags(**overrides):
    return RunConfig(**overrides)


AUTO = AUTO_STEPS_PER_EXECUTION


@pytest.mark.parametrize(
    'overrides,device,tf1,epoch,expected',
    [
        ({}, 'cpu', False, 40, {'xla': 'off', 'steps_per_execution': AUTO}),
        ({}, 'gpu', False, 40, {'xla': 'off', 'steps_per_execution': AUTO}),
        ({}, 'cpu', True, 40, {'xla': 'off', 'steps_per_execution': 1}),
        ({}, 'gpu', True, 40, {'xla': 'off', 'steps_per_execution': 1}),
        ({}, 'npu', False, 40, {'xla': 'off', 'steps_per_execution': 1}),
        ({'xla': 'on'}, 'cpu', True, 40, {'xla': 'on', 'steps_per_execution': 1}),
        ({'steps_per_execution': 3}, 'cpu', False, 30, {'xla': 'off', 'steps_per_execution': 3}),
        ({'profiling': True}, 'cpu', False, 40, {'xla': 'off', 'steps_per_execution': 1}),
        ({'over_dump': True}, 'gpu', False, 40, {'xla': 'off', 'steps_per_execution': 1}),
        # Executions end on epoch ends and on checkpoint steps: auto divides both.
        ({}, 'cpu', False, 10, {'xla': 'off', 'steps_per_execution': 2}),
        ({'ckpt_every_steps': 12}, 'cpu', False, 40, {'xla': 'off', 'steps_per_execution': 4}),
        ({'ckpt_every_steps': 3}, 'cpu', False, 40, {'xla': 'off', 'steps_per_execution': 1}),
        ({'eval_every_steps': 12}, 'cpu', False, 40, {'xla': 'off', 'steps_per_execution': 4}),
        (
            {'eval_every_steps': 20, 'ckpt_every_steps': 12},
            'cpu',
            False,
            40,
            {'xla': 'off', 'steps_per_execution': 4},
        ),
    ],
)
def test_resolve(overrides, device, tf1, epoch, expected):
    cfg = flags(**overrides)
    checks.check_execution(cfg)
    assert execution.resolve(cfg, device, tf1, epoch) == expected


@pytest.mark.parametrize(
    'overrides,device,tf1,words',
    [
        ({'xla': 'on'}, 'npu', True, ['--xla=on', 'NPU']),
        ({'steps_per_execution': 4}, 'npu', False, ['--steps_per_execution=4']),
        ({'steps_per_execution': 4}, 'cpu', True, ['--steps_per_execution=4', 'TensorFlow 2']),
        ({'steps_per_execution': 4}, 'cpu', False, ['does not divide the 10 steps']),
        ({'xla': 'on', 'deterministic': True}, 'cpu', False, ['--deterministic']),
    ],
)
def test_resolve_refuses(overrides, device, tf1, words):
    with pytest.raises(UsageError) as err:
        execution.resolve(flags(**overrides), device, tf1, 10)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize(
    'argv,words',
    [
        (['--xla=on', '--over_dump'], ['--xla=on', '--over_dump']),
        (['--steps_per_execution=4', '--profiling'], ['--steps_per_execution=4', '--profiling']),
        (['--steps_per_execution=4', '--data_dump_flag'], ['--data_dump_flag']),
        (['--steps_per_execution=4', '--ckpt_every_steps=6'], ['--ckpt_every_steps=6', 'multiple']),
        (['--steps_per_execution=4', '--eval_every_steps=6'], ['--eval_every_steps=6', 'multiple']),
        (['--xla=maybe'], ['xla']),
    ],
)
def test_conflicting_flags_are_one_line(capsys, tiny_cifar10, argv, words):
    expect_usage_error(
        capsys, ['--dataset=' + tiny_cifar10, '--labels=20', '--dry_run'] + argv, *words
    )


@pytest.mark.parametrize(
    'spe,total,start,expected',
    [
        (10, 30, 0, [(0, 3, 10, 0)]),
        (10, 25, 0, [(0, 2, 10, 0), (2, 3, 5, 20)]),  # the cut last epoch is a call of its own
        (10, 6, 0, [(0, 1, 6, 0)]),
        (10, 30, 14, [(1, 2, 6, 14), (2, 3, 10, 20)]),  # resumed mid-epoch
        (10, 25, 14, [(1, 2, 6, 14), (2, 3, 5, 20)]),
        (10, 17, 14, [(1, 2, 3, 14)]),
        (10, 30, 30, []),
    ],
)
def test_fit_phases_never_run_past_the_end(spe, total, start, expected):
    plan = Plan(
        batch_size=16,
        base_lr=0.05,
        steps_per_epoch=spe,
        total_steps=total,
        epochs=0,
        images_per_step=0,
    )
    phases = list(fit_phases(plan, start))
    assert phases == expected
    assert sum((last - first) * steps for first, last, steps, _ in phases) == total - start


def test_progress_lines_at_the_interval(monkeypatch, capsys):
    clock = [100.0]
    monkeypatch.setattr(progress.time, 'time', lambda: clock[0])
    lines = progress.ProgressLines(total_steps=100, images_per_step=192, seconds=60)
    lines.begin(0)
    for step in range(1, 101):
        clock[0] += 2.0  # 2 s per step: a line every 30 steps
        lines.update(step, {'loss': 1.5})
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in out] == ['30/100', '60/100', '90/100']
    assert '96 img/s' in out[0] and 'ETA 0:02:20' in out[0] and 'loss 1.5000' in out[0]
    silent = progress.ProgressLines(total_steps=100, images_per_step=192, seconds=0)
    silent.begin(0)
    clock[0] += 1000
    silent.update(50, {})
    assert capsys.readouterr().out == ''


def test_off_a_terminal_a_run_prints_progress_lines(tiny_fashion, tmp_path):
    proc = run(tiny_fashion, str(tmp_path / 'r'), '--epochs=3', '--log_every_seconds=0')
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not [line for line in proc.stdout.splitlines() if line.startswith('step ')]
    # 200 steps of a few tens of ms: several seconds, so several lines a second apart.
    proc = run(tiny_fashion, str(tmp_path / 'r2'), '--epochs=20', '--log_every_seconds=1')
    assert proc.returncode == 0, proc.stderr[-2000:]
    progress = [line for line in proc.stdout.splitlines() if line.startswith('step ')]
    assert len(progress) >= 2 and all('ETA' in line and 'img/s' in line for line in progress)


def test_several_steps_per_execution_give_the_same_training(tiny_fashion, tmp_path):
    """Several steps per call of the training function (TF 2) train exactly what
    one step per call trains: same losses per epoch and same weights."""
    from sesemi_base.compat import TF1

    exact = ['--deterministic', '--super_dropout=0', '--epochs=3', '--max_steps=27']
    one, many = str(tmp_path / 'one'), str(tmp_path / 'many')
    assert run(tiny_fashion, one, *exact, '--steps_per_execution=1').returncode == 0
    proc = run(tiny_fashion, many, *exact, *([] if TF1 else ['--steps_per_execution=5']))
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(os.path.join(many, 'args.json')) as f:
        assert json.load(f)['steps_per_execution'] == (1 if TF1 else 5)
    a, b = metrics(one), metrics(many)
    assert [r['step'] for r in a] == [r['step'] for r in b] == [10, 20, 27]
    for x, y in zip(a, b):
        assert x['loss'] == pytest.approx(y['loss'], rel=1e-5)
    for x, y in zip(
        load_weights(os.path.join(one, 'model.h5')), load_weights(os.path.join(many, 'model.h5'))
    ):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    'flags_a,flags_b,steps,tolerance',
    [
        # The defaults against one plain step a call: the same ops, to float32 rounding.
        ([], ['--xla=off', '--steps_per_execution=1'], 27, (1e-5, 1e-6)),
        # XLA fuses and reorders float32 sums, and under TF 2.x its run is multi-threaded
        # (there is no deterministic XLA max-pooling gradient): rounding differences grow
        # with every step of this tiny network, so it is compared early, on noise images (the
        # stripes of the tiny set hold max-pooling near-ties, where a rounding difference sends
        # a gradient to another pixel) at a tenth of the learning rate, where the growth stays
        # small (max |difference| after 4 steps: 2e-5 on TF 2.x, 8e-4 on TF 1.15; at 0.05, up to
        # 1.5e-2 depending on the images drawn).
        (['--xla=on', '--base_lr=0.005'], ['--xla=off', '--base_lr=0.005'], 4, (1e-2, 2e-3)),
    ],
)
def test_xla_trains_what_plain_execution_trains(
    tiny_fashion, tmp_path, flags_a, flags_b, steps, tolerance
):
    """The default execution (several steps per call on TF 2.x) and XLA train what
    one uncompiled step per call trains: after ``steps`` steps the losses agree to
    the relative and the weights to the (relative, absolute) ``tolerance``."""
    from sesemi_base.compat import TF1

    exact = ['--super_dropout=0', '--epochs=3', '--max_steps=%d' % steps]
    if TF1 or '--xla=on' not in flags_a:
        exact.append('--deterministic')
    data = tiny_fashion
    if '--xla=on' in flags_a:
        data = write_noise_fashion_mnist(str(tmp_path / 'noise'))
    a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
    for result, extra in ((a, flags_a), (b, flags_b)):
        proc = run(data, result, *exact, *extra)
        assert proc.returncode == 0, proc.stderr[-2000:]
    with open(os.path.join(b, 'args.json')) as f:
        assert json.load(f)['xla'] == 'off'
    for x, y in zip(metrics(a), metrics(b)):
        assert x['loss'] == pytest.approx(y['loss'], rel=tolerance[0])
    for x, y in zip(
        load_weights(os.path.join(a, 'model.h5')), load_weights(os.path.join(b, 'model.h5'))
    ):
        np.testing.assert_allclose(x, y, rtol=tolerance[0], atol=tolerance[1])


def test_the_precision_in_effect_defines_the_run(tiny_fashion, tmp_path):
    result = str(tmp_path / 'r')
    assert run(tiny_fashion, result, '--max_steps=3').returncode == 0
    with open(os.path.join(result, 'result.json')) as f:
        final = json.load(f)
    assert final['precision'] == 'float32' and final['xla'] == 'off'
    assert 'precision' in RUN_DEFINING
    from sesemi_base.compat import TF1

    proc = run(
        tiny_fashion, result, '--max_steps=3', '--resume', '--precision_mode=allow_mix_precision'
    )
    if TF1:  # no bfloat16 policy: the run stays float32 and resumes
        assert proc.returncode == 0, proc.stderr[-2000:]
    else:
        assert proc.returncode == 2, proc.stderr[-2000:]
        error = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
        assert error == [line for line in proc.stderr.splitlines() if line.strip()][-1:]
        assert 'precision mixed_bfloat16 (saved: float32)' in error[0]
