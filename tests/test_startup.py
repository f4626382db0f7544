"""Starting Keras: an installed backend is picked, and TensorFlow's start-up lines stay off the pages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinylib import startup
from tinylib.processes import tied_to_this_process

from conftest import WNIDS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# Makes `tensorflow` unfindable, as on a machine where it is not installed.
NO_TENSORFLOW = '''
import sys
class _NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError("No module named 'tensorflow'", name=name)
        return None
sys.meta_path.insert(0, _NoTensorFlow())
'''


def _python(code: str, tmp_path: Path, **env_changes) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL")}
    env.update({"KERAS_HOME": str(tmp_path / "keras-home"), "PYTHONPATH": str(REPO), **env_changes})
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, preexec_fn=tied_to_this_process)


def test_noise_is_dropped_and_every_other_line_is_written_back(capfd):
    with startup.quiet_native_output():
        os.write(2, b"I0000 00:00:1.0 1 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
                    b"GPU will not be used.\n")
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"E0000 something real went wrong\n")
        os.write(2, b"W0000 a real warning\n")
    err = capfd.readouterr().err
    assert err == "E0000 something real went wrong\nW0000 a real warning\n"


def test_the_capture_gives_descriptor_2_back_when_the_block_raises(capfd):
    with pytest.raises(RuntimeError):
        with startup.quiet_native_output():
            os.write(2, b"written before the error\n")
            raise RuntimeError("boom")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "written before the error\nafter\n"


@pytest.mark.slow
def test_importing_tensorflow_through_tinylib_prints_no_start_up_lines(tmp_path):
    pytest.importorskip("tensorflow")
    probe = "import tensorflow as tf; tf.config.list_physical_devices(); tf.constant(1.0) + 1"
    bare = _python(probe, tmp_path)
    quiet = _python("import tinylib, keras; " + probe + "; print(keras.backend.backend())", tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.strip() == "tensorflow"
    assert [line for line in quiet.stderr.splitlines() if startup.is_noise(line)] == []
    # Where TensorFlow is noisy at all (it is on a machine without a GPU), the bare import
    # shows it, so the assertion above is not vacuous.
    if not any(startup.is_noise(line) for line in bare.stderr.splitlines()):
        pytest.skip("this TensorFlow prints none of the known start-up lines")


@pytest.mark.slow
def test_without_tensorflow_jax_is_chosen_and_said(tmp_path):
    pytest.importorskip("jax")
    result = _python(NO_TENSORFLOW + "import tinylib, keras, os\n"
                     "print(keras.backend.backend(), os.environ['KERAS_BACKEND'])", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["jax", "jax"]
    assert "Keras' tensorflow backend is not installed; using its jax backend" in result.stderr


@pytest.mark.slow
def test_a_keras_json_naming_a_missing_tensorflow_does_not_stop_the_choice(tmp_path):
    """Keras writes ~/.keras/keras.json naming TensorFlow on its first import, installed or not."""
    pytest.importorskip("jax")
    (tmp_path / "keras-home").mkdir()
    (tmp_path / "keras-home" / "keras.json").write_text('{"backend": "tensorflow"}')
    result = _python(NO_TENSORFLOW + "import tinylib, keras; print(keras.backend.backend())", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "jax" and "using its jax backend" in result.stderr


@pytest.mark.slow
def test_the_command_line_starts_without_tensorflow(tmp_path):
    pytest.importorskip("jax")
    code = NO_TENSORFLOW + "import sys; from tinylib import cli; sys.exit(cli.main(['models']))"
    result = _python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "model1" in result.stdout and "jax backend" in result.stderr


def test_a_chosen_backend_is_never_overridden(tmp_path):
    result = _python(NO_TENSORFLOW + "import tinylib, os; print(os.environ['KERAS_BACKEND'])", tmp_path,
                     KERAS_BACKEND="torch")
    assert result.stdout.strip() == "torch" and "using Keras'" not in result.stderr
    (tmp_path / "keras-home").mkdir()
    (tmp_path / "keras-home" / "keras.json").write_text('{"backend": "jax"}')
    result = _python(NO_TENSORFLOW + "import tinylib, os; print(os.environ.get('KERAS_BACKEND'))", tmp_path)
    assert result.stdout.strip() == "None" and "using Keras'" not in result.stderr


def test_with_tensorflow_installed_nothing_is_changed(tmp_path):
    pytest.importorskip("tensorflow")
    result = _python("import tinylib, os; print(os.environ.get('KERAS_BACKEND'))", tmp_path)
    assert result.stdout.strip() == "None" and "using Keras'" not in result.stderr


@pytest.mark.slow
def test_relative_path_settings_and_non_ascii_names_under_an_ascii_locale(tmp_path, synthetic):
    """Two classes of trouble at once: a relative TINYLIB_DATA / TINYLIB_HOME / TINYLIB_RUNS
    keeps meaning the folder it was set in after the process changes folder, and a class
    name that ASCII cannot hold is read, stored and printed under a C locale."""
    import os
    import subprocess
    import sys

    words = synthetic / "words.txt"
    words.write_text(words.read_text(encoding="utf-8").replace("goldfish,", "poisson rouge \u00e0 l'\u00e9tang,"),
                     encoding="utf-8")
    script = (
        "import os, sys\n"
        "from tinylib import data, evaluate, train\n"
        "from tinylib.profiles import Profile\n"
        "os.chdir('/')\n"  # as a notebook or a script might
        "ds = data.load()\n"
        "print(len(ds.train), data.cache_dir())\n"
        "profile = Profile('smoke', classes=None, train_per_class=None, val_per_class=None, epochs=1, batch_size=8)\n"
        "run = train.train_model('model1', ds, profile, verbose=0)\n"
        "print(ds.class_names)\n"
        "print(evaluate.evaluate(run.model, ds.val, ds.class_names).summary())\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
           "TINYLIB_DATA": os.path.relpath(synthetic, work), "TINYLIB_HOME": "home", "TINYLIB_RUNS": "runs",
           "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", script], cwd=work, env=env, capture_output=True, timeout=600,
                          preexec_fn=tied_to_this_process)
    out, err = done.stdout.decode("ascii", "replace"), done.stderr.decode("ascii", "replace")
    assert done.returncode == 0, err[-3000:]
    assert "poisson rouge \\xe0 l'\\xe9tang" in out, out  # what an ASCII terminal can show
    assert f"{len(WNIDS) * 6} {work / 'home' / 'arrays-v1'}" in out, out
    assert "Traceback" not in err, err[-3000:]
    assert list((work / "runs").glob("model1-smoke-*/record.json"))
    assert (work / "home" / "arrays-v1" / "manifest.json").is_file()


def test_gpu_memory_is_taken_on_demand_unless_set_otherwise(tmp_path):
    """Two chapters open on one GPU: neither backend may take nearly all of its memory at start."""
    show = "import os, tinylib; print(os.environ['TF_FORCE_GPU_ALLOW_GROWTH'], os.environ['XLA_PYTHON_CLIENT_PREALLOCATE'])"
    assert _python(NO_TENSORFLOW + show, tmp_path).stdout.split() == ["true", "false"]
    assert _python(NO_TENSORFLOW + show, tmp_path, XLA_PYTHON_CLIENT_PREALLOCATE="true").stdout.split() == [
        "true", "true"]  # a setting of one's own stays
