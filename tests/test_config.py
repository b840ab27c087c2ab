"""The typed run configuration (sesemi_tf.config, sesemi_tf.arguments): one frozen
value with a field per flag, its args.json, the settings that define a run, the
defaults resolved from the flags, and a run saved before it existed resumed by it."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from sesemi_base.compat import TF1
from sesemi_base.errors import UsageError
from sesemi_tf import config, results
from sesemi_tf.arguments import parse
from sesemi_tf.config import RunConfig


def test_the_config_is_frozen_and_resolution_returns_new_values():
    cfg = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.batch_size = 32  # noqa: B003 (the point of the test)
    resolved = dataclasses.replace(cfg, device='cpu', precision='float32')
    assert (cfg.device, cfg.precision) == ('auto', None)
    assert (resolved.device, resolved.precision) == ('cpu', 'float32')


def test_run_defining_settings_come_from_the_fields():
    assert config.RUN_DEFINING == (
        'data',
        'image_size',
        'hflip',
        'zca',
        'test_fraction',
        'labels',
        'network',
        'width',
        'super_dropout',
        'mode',
        'epochs',
        'batch_size',
        'base_lr',
        'lr_decay_power',
        'max_steps',
        'seed',
        'precision',
        'scale_batch',
        'sync_bn',
        'replicas',
    )
    assert 'precise_bn' not in config.RUN_DEFINING  # may change on --resume
    assert set(config.RESOLVED_LATER) <= set(config.RUN_DEFINING)
    assert not set(config.defined_by_flags()) & set(config.RESOLVED_LATER)


def test_args_json_is_flat_with_every_field_and_reads_back():
    cfg = RunConfig(batch_size=8, labels=40, precision='float32')
    saved = json.loads(json.dumps(config.to_json(cfg)))
    assert sorted(saved) == sorted(f.name for f in config.FIELDS)
    assert config.from_json(saved) == cfg


def test_old_args_json_takes_defaults_and_ignores_unknown_keys():
    cfg = config.from_json({'batch_size': 4, 'a_key_from_elsewhere': 1})
    assert cfg.batch_size == 4 and cfg.replicas == 1 and not cfg.sync_bn
    assert cfg.precise_bn == 0


def test_check_resumable_names_every_difference():
    saved = config.to_json(RunConfig(batch_size=4, seed=1))
    results.check_resumable(saved, RunConfig(batch_size=4, seed=1), config.defined_by_flags())
    with pytest.raises(UsageError) as err:
        results.check_resumable(saved, RunConfig(batch_size=8, seed=2), config.defined_by_flags())
    assert '--batch_size=8 (saved: 4)' in str(err.value) and '--seed=2 (saved: 1)' in str(err.value)


def test_parse_resolves_the_defaults(tiny_cifar10, tmp_path):
    cfg, info = parse(['x', '--dataset=' + tiny_cifar10, '--labels=20', '--mode=sesemi'])
    assert (cfg.epochs, cfg.super_dropout, cfg.in_network_dropout) == (50, 0.2, 0.0)
    assert cfg.result == os.path.join('results', 'cifar10_convnet_sesemi_20')
    assert cfg.ckpt_path == os.path.join(cfg.result, 'checkpoints') and not cfg.resume
    assert (cfg.zca, cfg.hflip) == (True, True) and info.name == 'cifar10'
    given = parse(['x', '--dataset=' + tiny_cifar10, '--labels=20', '--ckpt_path=' + str(tmp_path)])
    assert given[0].resume  # a --ckpt_path resumes from it, as the ModelZoo scripts expect
    if not TF1:  # --cpu_replicas mirrors over CPU devices
        argv = [
            'x',
            '--dataset=' + tiny_cifar10,
            '--labels=20',
            '--distribute=mirrored',
            '--cpu_replicas=2',
        ]
        assert parse(argv)[0].device == 'cpu'


def test_every_field_with_help_is_a_flag():
    from absl import flags

    from sesemi_tf.arguments import define_flags

    fv = flags.FlagValues()
    define_flags(fv)
    with_help = {f.name for f in config.FIELDS if 'help' in f.metadata}
    assert set(fv) == with_help | {'data_path'}
    for name in with_help:
        assert fv[name].default == getattr(RunConfig(), name), name


# --------------------------------------------- a run saved before the config


def entry(*args, env=None):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, 'train_evaluate_asl2.py')] + list(args),
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES='', **(env or {})),
    )


def model_weights(path):
    from sesemi_base.compat import K, keras

    K.clear_session()
    weights = keras.models.load_model(path, compile=False).get_weights()
    K.clear_session()
    return weights


@pytest.mark.slow
def test_a_run_saved_before_the_typed_config_resumes_to_the_same_weights(tiny_fashion, tmp_path):
    """tests/data holds an asl run that the version before the typed config wrote with
    --deterministic and stopped after step 3 (checkpoint at step 2). Resumed, it ends with
    the weights that an uninterrupted run of this version reaches."""
    flags = [
        '--data=fashion_mnist',
        '--dataset=' + tiny_fashion,
        '--network=convnet',
        '--width=0.0625',
        '--labels=20',
        '--batch_size=2',
        '--epochs=2',
        '--max_steps=4',
        '--ckpt_every_steps=2',
        '--mode=asl',
        '--deterministic',
        '--super_dropout=0',
    ]
    resumed = str(tmp_path / 'resumed')
    shutil.copytree(
        os.path.join(ROOT, 'tests', 'data', 'asl_run_before_config_' + ('tf1' if TF1 else 'tf2')),
        resumed,
    )
    proc = entry(*flags, '--result=' + resumed, '--resume')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Resuming from %s at step 2' % os.path.join(resumed, 'checkpoints', 'ckpt-2') in (
        proc.stdout
    )
    with open(os.path.join(resumed, 'args.json')) as f:
        assert json.load(f)['precise_bn'] == 0  # rewritten in today's format
    whole = str(tmp_path / 'whole')
    proc = entry(*flags, '--result=' + whole)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The saved run's first two steps ran on another CPU, whose kernels may round otherwise:
    # measured, TF 2.21 resumes bit-identical and TF 1.15 within 8.3e-7; a 1 % change of the
    # learning rate moves the weights by 2.5e-2 (TF 2.21) and 3.6e-2 (TF 1.15).
    for a, b in zip(
        model_weights(os.path.join(resumed, 'model.h5')),
        model_weights(os.path.join(whole, 'model.h5')),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
