"""The model file and the tools built on it: model_io, evaluate.py, predict.py, export.py.

Two tiny training runs (CIFAR-10 with ZCA, Fashion-MNIST for the gray, padded
path) are shared by the whole module; the tools run in this process (TensorFlow
is loaded once), and once each as real command lines for the bad-input path.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, write_cifar10, write_fashion_mnist

import dataset
from sesemi_tf import model_io, preprocessing

TINY = [
    '--network=convnet',
    '--width=0.0625',
    '--labels=20',
    '--batch_size=2',
    '--epochs=2',
    '--max_steps=6',
]


def command(script, args):
    return [sys.executable, os.path.join(ROOT, script)] + list(args)


def cli(script, args):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='')
    return subprocess.run(
        command(script, args),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


class Run:
    """A finished training run: its data folder, result folder and files."""

    def __init__(self, data, folder, result):
        self.data, self.folder, self.result = data, folder, result
        self.model = os.path.join(result, 'model.h5')
        with open(os.path.join(result, 'result.json')) as f:
            self.final = json.load(f)
        (self.x_train, _), (self.x_test, self.y_test) = dataset.load(data, folder)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """Trains on tiny CIFAR-10 and Fashion-MNIST, both runs at the same time."""
    root = tmp_path_factory.mktemp('runs')
    folders = {
        'cifar10': write_cifar10(str(root / 'cifar-10-batches-py')),
        'fashion_mnist': write_fashion_mnist(str(root / 'fashion')),
    }
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='')
    procs = {
        name: subprocess.Popen(
            command(
                'train_evaluate_asl2.py',
                ['--data=' + name, '--dataset=' + folder, '--result=' + str(root / name)] + TINY,
            ),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,
        )
        for name, folder in folders.items()
    }
    for _name, proc in procs.items():
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
    return {name: Run(name, folders[name], str(root / name)) for name in folders}


@pytest.fixture(params=['cifar10', 'fashion_mnist'])
def run(request, runs):
    return runs[request.param]


@pytest.fixture(autouse=True)
def fresh_keras():
    """Each test starts from an empty Keras graph/session (TF 1.15 keeps one per process)."""
    yield
    if 'compat' in sys.modules:
        sys.modules['compat'].K.clear_session()


def test_model_file_carries_the_training_preprocessing(run):
    import h5py

    from sesemi_base.compat import keras
    from utils import global_contrast_normalize

    info = dataset.get(run.data)
    with h5py.File(run.model, 'r') as f:
        attrs = f['sesemi'].attrs
        assert preprocessing.text(attrs['data']) == run.data
        assert json.loads(preprocessing.text(attrs['class_names'])) == list(info.class_names)
        assert float(attrs['gcn_scale']) == 55.0 and int(attrs['seed']) == 0
        assert bool(attrs['zca']) == info.zca and bool(attrs['hflip']) == info.hflip
        assert list(attrs['input_shape']) == list(info.shape) and int(attrs['n_classes']) == 10
        assert ('zca_matrix' in f['sesemi']) == info.zca
    prep = model_io.read_preprocessing(run.model, data=run.data, input_shape=info.shape)
    assert prep.pad == (2 if run.data == 'fashion_mnist' else 0)
    gcn = global_contrast_normalize(run.x_test)
    if not info.zca:
        np.testing.assert_array_equal(prep.apply(run.x_test), gcn)
    else:
        # The stored ZCA is the one fitted on the run's GCN'd training set: mean μ and
        # W = (Σ + 0.1·I)^(-1/2), checked as W·W·(Σ + 0.1·I)·v = v on random v (cheaper than
        # a refit).
        train = (
            global_contrast_normalize(run.x_train).reshape(len(run.x_train), -1).astype(np.float64)
        )
        mean, w = prep.zca.mean.astype(np.float64), prep.zca.matrix.astype(np.float64)
        np.testing.assert_allclose(mean, train.mean(axis=0), atol=1e-5)
        np.testing.assert_allclose(w, w.T, atol=1e-5)
        v = np.random.RandomState(0).standard_normal((train.shape[1], 3))
        centered = train - mean
        sigma_v = centered.T.dot(centered.dot(v)) / (len(train) - 1) + 0.1 * v
        np.testing.assert_allclose(w.dot(w.dot(sigma_v)), v, rtol=1e-3, atol=1e-3)
        expected = np.dot(gcn.reshape(len(gcn), -1) - prep.zca.mean, prep.zca.matrix)
        np.testing.assert_array_equal(prep.apply(run.x_test), expected.reshape(gcn.shape))
    # Keras' own loader ignores the extra group.
    assert keras.models.load_model(run.model, compile=False).output_shape == (None, 10)


def test_evaluate_reproduces_the_final_evaluation(run, capsys):
    import evaluate

    assert evaluate.main(['evaluate.py', '--model=' + run.model, '--dataset=' + run.folder]) == 0
    with open(os.path.join(run.result, 'evaluation.json')) as f:
        written = json.load(f)
    assert json.loads(capsys.readouterr().out) == written
    assert written['error_dense'] == run.final['error_dense']
    assert written['error_single'] == run.final['error_single']
    assert written['n_test'] == 30 and written['data'] == run.data and written['seed'] == 0


def write_pngs(run, folder, count=6):
    """The first test images as PNG files, as the dataset's source images were (28×28 gray for
    Fashion-MNIST, 32×32 RGB for CIFAR-10)."""
    from PIL import Image

    os.makedirs(folder)
    pixels = np.round(run.x_test[:count] * 255).astype(np.uint8)
    if run.data == 'fashion_mnist':
        pixels = pixels[:, 2:-2, 2:-2, 0]
    paths = [os.path.join(folder, 'img%d.png' % i) for i in range(count)]
    for p, image in zip(paths, pixels):
        Image.fromarray(image).save(p)
    return paths


def test_predict_gives_the_classes_of_the_model(run, tmp_path, capsys):
    import predict

    paths = write_pngs(run, str(tmp_path / 'images'))
    argv = ['predict.py', '--model=' + run.model, '--images=' + str(tmp_path / 'images'), '--top=3']
    # One dataset writes the predictions to a file, the other prints them.
    output = str(tmp_path / 'predictions.json') if run.data == 'cifar10' else None
    assert predict.main(argv + (['--output=' + output] if output else [])) == 0
    if output:
        with open(output) as f:
            rows = json.load(f)['predictions']
    else:
        rows = json.loads(capsys.readouterr().out)['predictions']
    assert [r['file'] for r in rows] == paths
    model, prep = model_io.load_model(run.model)
    probs = model.predict(prep.apply(run.x_test[: len(paths)]), verbose=0)
    names = dataset.get(run.data).class_names
    for row, p in zip(rows, probs):
        assert [c['class'] for c in row['top']] == list(np.argsort(-p, kind='stable')[:3])
        assert [c['name'] for c in row['top']] == [names[c['class']] for c in row['top']]
        np.testing.assert_allclose(
            [c['probability'] for c in row['top']], np.sort(p)[::-1][:3], rtol=1e-5, atol=1e-6
        )


def test_predict_reads_images_as_the_dataset_loader_does(runs, tmp_path):
    from PIL import Image

    import predict

    fashion = runs['fashion_mnist']
    png = write_pngs(fashion, str(tmp_path / 'fm'), count=1)[0]
    expected = np.round(fashion.x_test[0] * 255).astype(np.uint8)
    np.testing.assert_array_equal(predict.read_image(png, (32, 32, 1), 2), expected)
    # Other sizes and colour images: converted to gray, resized to 28×28, then the zero border.
    Image.new('RGB', (40, 50), (200, 100, 50)).save(str(tmp_path / 'rgb.jpg'))
    gray = predict.read_image(str(tmp_path / 'rgb.jpg'), (32, 32, 1), 2)
    assert gray.shape == (32, 32, 1) and gray[:2].max() == 0 and gray[:, -2:].max() == 0
    assert abs(int(gray[16, 16, 0]) - 124) <= 2  # ITU-R 601 luma of the colour
    # A gray image for a colour model: three equal channels, resized to 32×32.
    Image.new('L', (20, 20), 77).save(str(tmp_path / 'gray.png'))
    rgb = predict.read_image(str(tmp_path / 'gray.png'), (32, 32, 3), 0)
    assert rgb.shape == (32, 32, 3) and (rgb == 77).all()


def run_export(model, output):
    """Exports ``model`` to ``output`` and returns a function images → probabilities using it."""
    import export
    from sesemi_base.compat import TF1, tf

    assert export.main(['export.py', '--model=' + model, '--output=' + output]) == 0
    with open(os.path.join(output, 'serving.json')) as f:
        described = json.load(f)
    if not TF1:
        signature = tf.saved_model.load(output).signatures['serving_default']
        return lambda x: signature(images=tf.constant(x))['probabilities'].numpy()
    graph_def = tf.compat.v1.GraphDef()
    with open(os.path.join(output, described['file']), 'rb') as f:
        graph_def.ParseFromString(f.read())
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name='')
    session = tf.compat.v1.Session(graph=graph)
    return lambda x: session.run(
        described['outputs']['probabilities'], {described['inputs']['images']: x}
    )


def test_export_takes_raw_images_and_matches_keras(run, tmp_path):
    output = str(tmp_path / 'export')
    os.makedirs(output)  # an earlier export, which the new one replaces
    for name in ('serving.json', 'stale.txt'):
        with open(os.path.join(output, name), 'w') as f:
            f.write('{}\n')
    serve = run_export(run.model, output)
    assert not os.path.exists(os.path.join(output, 'stale.txt'))
    assert os.listdir(str(tmp_path)) == ['export']  # no temporary or old folder left
    model, prep = model_io.load_model(run.model)
    images = run.x_test[:8]
    # The graph's ZCA sums 3072 float32 products in another order than numpy does.
    np.testing.assert_allclose(
        serve(images), model.predict(prep.apply(images), verbose=0), rtol=1e-3, atol=1e-4
    )
    assert (serve(images).argmax(1) == model.predict(prep.apply(images), verbose=0).argmax(1)).all()


# ---------------------------------------------------------------- bad input


def bad_models(runs, folder):
    """Model files that the tools must refuse: name → path."""
    import h5py

    os.makedirs(folder)
    paths = {
        name: os.path.join(folder, name + '.h5')
        for name in ('text', 'plain', 'mismatch', 'truncated')
    }
    with open(paths['text'], 'w') as f:
        f.write('not a model\n')
    for name in ('plain', 'mismatch'):
        shutil.copy(runs['fashion_mnist'].model, paths[name])
    with h5py.File(paths['plain'], 'a') as f:  # a Keras model without preprocessing
        del f['sesemi']
    with h5py.File(paths['mismatch'], 'a') as f:  # network for 32x32x1, preprocessing for x3
        f['sesemi'].attrs['input_shape'] = np.array([32, 32, 3])
    with open(runs['cifar10'].model, 'rb') as f:
        whole = f.read()
    with open(paths['truncated'], 'wb') as f:
        f.write(whole[: len(whole) // 2])
    paths['missing'] = os.path.join(folder, 'missing.h5')
    return paths


def expect_usage_error(capsys, module, argv, *words):
    import importlib

    assert importlib.import_module(module).main([module + '.py'] + argv) == 2
    out, err = capsys.readouterr()
    assert err.count('\n') == 1 and err.startswith('error: '), err
    assert not out
    for word in words:
        assert word in err, err


def test_bad_input_is_one_line_and_writes_nothing(runs, tmp_path, capsys):
    cifar, fashion = runs['cifar10'], runs['fashion_mnist']
    models = bad_models(runs, str(tmp_path / 'models'))
    images = str(tmp_path / 'images')
    write_pngs(fashion, images, count=2)
    not_image = os.path.join(images, 'notes.png')
    with open(not_image, 'w') as f:
        f.write('not an image\n')
    empty = str(tmp_path / 'empty')
    os.makedirs(empty)
    with open(os.path.join(empty, 'readme.txt'), 'w') as f:
        f.write('no images here\n')
    out = str(tmp_path / 'out.json')
    before = {r.result: sorted(os.listdir(r.result)) for r in runs.values()}
    for name, words in (
        ('missing', ['does not exist']),
        ('text', ['not an HDF5 file']),
        ('plain', ["no 'sesemi'"]),
        ('mismatch', ['inconsistent', '32x32x1']),
        ('truncated', ['truncated.h5']),
    ):
        model = '--model=' + models[name]
        expect_usage_error(
            capsys, 'evaluate', [model, '--dataset=' + fashion.folder, '--output=' + out], *words
        )
        expect_usage_error(
            capsys, 'predict', [model, '--images=' + images, '--output=' + out], *words
        )
        expect_usage_error(
            capsys, 'export', [model, '--output=' + str(tmp_path / 'export')], *words
        )
    # A Fashion-MNIST model evaluated on CIFAR-10.
    expect_usage_error(
        capsys,
        'evaluate',
        [
            '--model=' + fashion.model,
            '--data=cifar10',
            '--dataset=' + cifar.folder,
            '--output=' + out,
        ],
        'fashion_mnist, not cifar10',
    )
    expect_usage_error(capsys, 'evaluate', ['--model=' + cifar.model, '--data=svhn'], 'not svhn')
    expect_usage_error(
        capsys,
        'evaluate',
        ['--model=' + cifar.model, '--dataset=' + str(tmp_path / 'nowhere')],
        'nowhere',
    )
    expect_usage_error(
        capsys,
        'predict',
        ['--model=' + fashion.model, '--images=' + images, '--output=' + out],
        'notes.png',
        'not a readable image',
    )
    expect_usage_error(
        capsys,
        'predict',
        ['--model=' + fashion.model, '--images=' + empty],
        'holds no PNG/JPG/JPEG/BMP/GIF images',
    )
    expect_usage_error(capsys, 'predict', ['--model=' + fashion.model], 'no images')
    expect_usage_error(
        capsys,
        'predict',
        [
            '--model=' + fashion.model,
            '--images=' + images,
            '--output=' + str(tmp_path / 'no' / 'out.json'),
        ],
        'does not exist',
    )
    expect_usage_error(
        capsys, 'export', ['--model=' + fashion.model, '--output=' + empty], 'not an earlier export'
    )
    expect_usage_error(capsys, 'evaluate', ['--dataset=' + fashion.folder], 'model')
    assert not os.path.exists(out) and not os.path.exists(str(tmp_path / 'export'))
    assert os.listdir(empty) == ['readme.txt']
    assert {r.result: sorted(os.listdir(r.result)) for r in runs.values()} == before


def test_bad_input_is_found_before_tensorflow_loads(runs, tmp_path):
    fashion = runs['fashion_mnist']
    with open(str(tmp_path / 'notes.png'), 'w') as f:
        f.write('not an image\n')
    code = (
        'import sys, evaluate, predict\n'
        'codes = [evaluate.main(["evaluate.py", "--model=%s", "--data=cifar10"]),\n'
        '         predict.main(["predict.py", "--model=%s", "--images=%s"])]\n'
        'print(codes, "tensorflow" in sys.modules)\n'
        % (fashion.model, fashion.model, str(tmp_path / 'notes.png'))
    )
    proc = subprocess.run(
        [sys.executable, '-c', code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.stdout.split() == ['[2,', '2]', 'False'], proc.stdout + proc.stderr
    assert len(proc.stderr.splitlines()) == 2, proc.stderr


def test_command_lines_print_nothing_on_stderr(runs, tmp_path):
    fashion = runs['fashion_mnist']
    for script, args in (
        (
            'evaluate.py',
            ['--dataset=' + fashion.folder, '--output=' + str(tmp_path / 'evaluation.json')],
        ),
        ('export.py', ['--output=' + str(tmp_path / 'export')]),
    ):
        proc = cli(script, ['--model=' + fashion.model] + args)
        assert proc.returncode == 0 and proc.stderr == '', (script, proc.stderr[-3000:])


@pytest.mark.parametrize('script', ['evaluate.py', 'predict.py', 'export.py'])
def test_command_line_bad_model_exits_2_without_traceback(tmp_path, script):
    images = ['--images=' + str(tmp_path)] if script == 'predict.py' else []
    proc = cli(script, ['--model=' + str(tmp_path / 'missing.h5')] + images)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count('\n') == 1 and proc.stderr.startswith('error: '), proc.stderr
    assert 'missing.h5' in proc.stderr and not proc.stdout
    assert os.listdir(str(tmp_path)) == []
