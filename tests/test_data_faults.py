"""tinylib.data when things go wrong around it: a killed preparation, two at once, a damaged
cache, a full disk or a read-only cache folder, and progress written into a log."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_IMAGES, TRAIN_PER_CLASS, VAL_PER_CLASS, WNIDS
from test_data import assert_nothing_written
from tinylib import data, progress
from tinylib.data import cache, decoding
from tinylib.processes import tied_to_this_process

psutil = pytest.importorskip("psutil")

REPO = Path(__file__).resolve().parents[1]
ALL_IMAGES = (TRAIN_PER_CLASS + VAL_PER_CLASS) * len(WNIDS) + TEST_IMAGES


def child_env(home: Path, source: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, TINYLIB_HOME=str(home), TINYLIB_DATA=str(source), **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


# --- 0. a script without a main guard is told, not left waiting ------------------------------

UNGUARDED = """
from tinylib import data
from tinylib.data import decoding

decoding.POOL_MIN_IMAGES = 0
decoding.START_METHOD = "spawn"  # as on macOS and Windows, or once TensorFlow is imported
data.load()  # no `if __name__ == "__main__":`: each spawned worker runs this line again
print("loaded")
"""


def test_a_script_without_a_main_guard_is_told_what_to_do_instead_of_hanging(tmp_path, synthetic):
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(UNGUARDED))
    run = subprocess.run([sys.executable, str(script)], env=child_env(tmp_path / "home", synthetic),
                         capture_output=True, text=True, timeout=240, preexec_fn=tied_to_this_process)
    assert run.returncode != 0 and "loaded" not in run.stdout
    assert 'if __name__ == "__main__":' in run.stderr and "python -m tinylib prepare" in run.stderr


# --- 1. a killed preparation takes its decoding workers with it -----------------------------

KILL_CHILD = """
import os, sys, time
from pathlib import Path
from tinylib import data
from tinylib.data import decoding

# At module level, so that spawned workers (which import this script) decode slowly too.
decoding.POOL_MIN_IMAGES = 0
_decode = decoding.decode_image

def slow_decode(raw, name):
    Path(os.environ["STARTED"]).touch()
    time.sleep(0.5)
    return _decode(raw, name)

decoding.decode_image = slow_decode

if __name__ == "__main__":
    decoding.START_METHOD = sys.argv[1]
    data.prepare(workers=2)
"""


def gone(process) -> bool:
    """Exited (a zombie that nobody reaps counts: it runs nothing and holds no memory)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_workers_die_with_a_killed_preparation(tmp_path, synthetic, method):
    script = tmp_path / "prepare_child.py"
    script.write_text(textwrap.dedent(KILL_CHILD))
    started = tmp_path / "started"
    env = child_env(tmp_path / "home", synthetic, STARTED=str(started))
    with open(tmp_path / "stderr.txt", "wb") as err:
        child = subprocess.Popen([sys.executable, str(script), method], env=env, stderr=err)
    try:
        wait_for(lambda: started.exists() or child.poll() is not None, 60, "a worker to start decoding")
        assert child.poll() is None, (tmp_path / "stderr.txt").read_text()
        workers = psutil.Process(child.pid).children(recursive=True)
        assert workers, "the pool started no worker process"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        deadline = time.monotonic() + 5
        while not all(gone(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        survivors = [w.pid for w in workers if not gone(w)]
    finally:
        for worker in psutil.Process(child.pid).children(recursive=True) if child.poll() is None else []:
            worker.kill()
        if child.poll() is None:
            child.kill()
    for pid in survivors:  # clean up before failing
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    assert not survivors, f"{method}: workers {survivors} outlived their killed parent"


# --- 2. two preparations at once: the second waits, then uses the first one's cache -----------

TWICE_CHILD = """
import os, sys, time
from pathlib import Path
from tinylib import data
from tinylib.data import decoding

_decode, decoded = decoding.decode_image, 0

def gated_decode(raw, name):
    # With GATE set, stop at the first image until the test opens the gate, so that the
    # other process surely arrives while this one is preparing.
    global decoded
    gate = os.environ.get("GATE")
    if gate and decoded == 0:
        Path(gate + ".holding").touch()
        deadline = time.monotonic() + 30
        while not Path(gate).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    decoded += 1
    return _decode(raw, name)

decoding.decode_image = gated_decode
if sys.argv[1] == "prepare":
    data.prepare()
ds = data.load()
print(f"decoded {decoded} train {len(ds.train)} val {len(ds.val)}")
"""


@pytest.mark.parametrize("call", ["load", "prepare"])
def test_two_preparations_at_once_decode_once(tmp_path, synthetic, call):
    script = tmp_path / "twice_child.py"
    script.write_text(textwrap.dedent(TWICE_CHILD))
    home, gate = tmp_path / "home", tmp_path / "gate"

    def start(name: str, **extra: str):
        out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        with open(out, "wb") as o, open(err, "wb") as e:
            proc = subprocess.Popen([sys.executable, str(script), call], stdout=o, stderr=e,
                                    env=child_env(home, synthetic, **extra))
        return proc, out, err

    first, first_out, first_err = start("first", GATE=str(gate))
    try:
        wait_for(lambda: Path(f"{gate}.holding").exists() or first.poll() is not None, 60,
                 "the first preparation to start decoding")
        second, second_out, second_err = start("second")
        try:
            wait_for(lambda: "waiting for another" in second_err.read_text() or second.poll() is not None,
                     60, "the second preparation to wait")
        finally:
            gate.touch()
            assert second.wait(60) == 0, second_err.read_text()
        assert first.wait(60) == 0, first_err.read_text()
    finally:
        for proc in (first, locals().get("second")):
            if proc is not None and proc.poll() is None:
                proc.kill()
    expected = f"train {TRAIN_PER_CLASS * len(WNIDS)} val {VAL_PER_CLASS * len(WNIDS)}"
    assert first_out.read_text().strip() == f"decoded {ALL_IMAGES} {expected}"
    assert second_out.read_text().strip() == f"decoded 0 {expected}"  # used the first one's cache
    waited = second_err.read_text()
    assert waited.count(f"waiting for another preparation (pid {first.pid})") == 1, waited
    assert "Preparing" not in waited and first_err.read_text().count("Preparing") == 1
    assert sorted(p.name for p in home.iterdir()) == [data.CACHE_DIR_NAME]  # no lock, no temporaries


def test_stale_temporaries_are_removed_only_holding_the_lock(tiny_env, synthetic, monkeypatch):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    held = []
    real_remove = cache._remove_stale_temporaries

    def remove(parent):
        held.append((parent / data.LOCK_NAME).exists())
        real_remove(parent)

    monkeypatch.setattr(cache, "_remove_stale_temporaries", remove)
    tiny_env.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid whose process has ended
    stale = tiny_env / f".{data.CACHE_DIR_NAME}.tmp-{gone.pid}"
    stale.mkdir()
    unzipping = tiny_env / f".{data.FOLDER_NAME}.extracting-{gone.pid}"  # a killed download's unzip
    (unzipping / data.FOLDER_NAME).mkdir(parents=True)
    # Another preparation's folder, its process alive (where there is no lock: Windows, no flock).
    live = tiny_env / f".{data.CACHE_DIR_NAME}.tmp-{os.getppid()}"
    live.mkdir()
    data.prepare()
    assert held == [True] and not stale.exists() and not unzipping.exists() and live.exists()
    assert not (tiny_env / data.LOCK_NAME).exists()  # the holder removes it when done


def _dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def test_a_killed_preparations_temporary_is_swept_when_the_cache_needs_no_rebuild(tiny_env, synthetic, monkeypatch):
    """A kill during ``prepare(force=True)`` beside a good cache left 1.3 GB that no later
    call removed: they returned before sweeping, the cache being good."""
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    data.prepare()
    stale = tiny_env / f".{data.CACHE_DIR_NAME}.tmp-{_dead_pid()}"
    (stale / "train_images.npy").parent.mkdir()
    (stale / "train_images.npy").write_bytes(b"half a build")
    data.prepare()
    assert not stale.exists() and data.read_manifest() is not None


def test_a_kill_between_the_installs_two_renames_loses_no_cache(tiny_env, synthetic, monkeypatch, capsys):
    """The old cache renamed away, the new one not yet in place: the next call puts the new
    one back instead of sweeping both and decoding the dataset again."""
    import shutil

    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    target = data.prepare()
    manifest = data.read_manifest()
    pid = _dead_pid()
    new = tiny_env / f".{data.CACHE_DIR_NAME}.tmp-{pid}"
    shutil.copytree(target, new)
    os.replace(target, tiny_env / f".{data.CACHE_DIR_NAME}.tmp-old-{pid}")
    (new / "marker").write_text("the new build")
    capsys.readouterr()
    assert data.prepare() == target
    err = capsys.readouterr().err
    assert "Recovered the cache" in err and "Preparing" not in err, err
    assert (target / "marker").read_text() == "the new build" and data.read_manifest() == manifest
    assert sorted(p.name for p in tiny_env.iterdir()) == [data.CACHE_DIR_NAME]  # the old one swept, no lock left


def test_a_build_alone_is_not_known_to_be_on_disk_and_is_swept(tiny_env, synthetic, monkeypatch, capsys):
    """Only the install's gap leaves the old cache renamed away beside the new build; a build
    alone (a first one whose arrays a power cut may have left as zeros) is decoded again."""
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    target = data.prepare()
    lone = tiny_env / f".{data.CACHE_DIR_NAME}.tmp-{_dead_pid()}"
    os.replace(target, lone)
    capsys.readouterr()
    data.prepare()
    err = capsys.readouterr().err
    assert "Recovered" not in err and "Preparing" in err, err
    assert not lone.exists() and data.read_manifest() is not None


def test_whether_a_process_runs_is_never_asked_with_a_signal_on_windows(monkeypatch):
    """os.kill(pid, 0) on Windows is TerminateProcess: the sweep would kill the preparation
    (or whatever process now has the pid) that it asks about."""
    from tinylib import files

    asked = []
    monkeypatch.setattr(files.os, "name", "nt")
    monkeypatch.setattr(files.os, "kill", lambda *args: pytest.fail(f"os.kill{args} on Windows"))
    monkeypatch.setattr(files, "_windows_process_running", lambda pid: asked.append(pid) or True)
    assert files.process_running(4321) and asked == [4321]


# --- 3. a damaged cache: found when it matters, rebuilt or named ------------------------------


def flip_middle_byte(path: Path, restore_mtime: bool) -> int:
    """Flip one byte in the middle, keeping the size; the mtime moves on (by 1 s, so the
    test does not depend on the clock's resolution) or is set back. Returns the offset."""
    before = path.stat()
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle] ^= 0xFF
    path.write_bytes(bytes(raw))
    shift = 0 if restore_mtime else 1_000_000_000
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + shift))
    return middle


def damage_header(path: Path, restore_mtime: bool) -> None:
    """Overwrite the .npy magic: NumPy then takes the file for a pickle."""
    before = path.stat()
    with open(path, "r+b") as f:
        f.write(b"garbage")
    shift = 0 if restore_mtime else 1_000_000_000
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + shift))


def test_load_checksums_only_files_that_changed(tiny_env, synthetic, monkeypatch):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    folder = data.prepare()
    stamp = (folder / data.STAMP_NAME).read_text()
    assert "train_images.npy" in stamp  # verified right after preparation
    hashed = []
    real_digest = data.file_digest
    monkeypatch.setattr(cache, "file_digest", lambda path, *a: hashed.append(Path(path).name) or real_digest(path, *a))
    data.load()
    assert hashed == []  # nothing changed: no checksum, the load stays instant
    labels = folder / "val_labels.npy"
    info = labels.stat()
    os.utime(labels, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))  # touched, same bytes
    data.load()
    data.load()
    assert hashed == ["val_labels.npy"]  # checked once, then the stamp records it as verified


def test_a_cache_that_cannot_take_its_stamp_is_hashed_once_per_process(tiny_env, synthetic, monkeypatch):
    """A cache shared read-only (an instructor's, copied without its stamp) was hashed whole,
    1.3 GB at full scale, at every load: the process remembers what it verified."""
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    folder = data.prepare()
    (folder / data.STAMP_NAME).unlink()
    monkeypatch.setattr(cache, "_VERIFIED_HERE", {})

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache, "write_json", read_only)
    hashed = []
    real_digest = data.file_digest
    monkeypatch.setattr(cache, "file_digest", lambda path, *a: hashed.append(Path(path).name) or real_digest(path, *a))
    data.load()
    first = sorted(hashed)
    assert "train_images.npy" in first and not (folder / data.STAMP_NAME).exists()
    data.load()
    assert sorted(hashed) == first  # the second load hashed nothing


def test_flipped_byte_is_found_and_the_cache_rebuilt(tiny_env, synthetic, monkeypatch, capsys):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    folder = data.prepare()
    good = np.array(data.load().train.images)
    flip_middle_byte(folder / "train_images.npy", restore_mtime=False)
    ds = data.load()
    err = capsys.readouterr().err
    assert f"cache file {folder / 'train_images.npy'} is damaged" in err and "rebuilding" in err
    assert np.array_equal(ds.train.images, good)
    data.verify_cache()


def test_same_size_same_mtime_change_is_caught_only_by_verify_cache(tiny_env, synthetic, monkeypatch):
    """The documented limit: load() trusts a file whose size and mtime are as verified."""
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    folder = data.prepare()
    good = np.array(data.load().train.images)
    images = folder / "train_images.npy"
    middle = flip_middle_byte(images, restore_mtime=True)
    served = data.load().train.images  # no error: the flipped byte is served as data
    changed = np.flatnonzero(np.asarray(served).reshape(-1) != good.reshape(-1))
    assert changed.tolist() == [middle - served.offset]
    with pytest.raises(data.DataError, match=f"{images}.*corrupt.*prepare --force"):
        data.verify_cache()
    # Once verify_cache has reported it, the next load no longer trusts the file's size and time.
    assert np.array_equal(data.load().train.images, good)
    data.verify_cache()


@pytest.mark.parametrize("bit", range(0, 8 * 118, 37))  # bits across the .npy header (128 bytes)
def test_any_bit_flipped_in_a_header_is_a_damaged_file_not_a_traceback(tiny_env, synthetic, monkeypatch, bit):
    """Flipped with the mtime kept, so only reading the header finds it: NumPy's parser then
    fails in many ways (ValueError, SyntaxError, tokenize.TokenError, ...); each is 'damaged'."""
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    folder = data.prepare()
    monkeypatch.delenv("TINYLIB_DATA")
    shutil.rmtree(synthetic)  # nothing to rebuild from: the error must name the file
    labels = folder / "train_labels.npy"
    before = labels.stat()
    raw = bytearray(labels.read_bytes())
    raw[bit // 8] ^= 1 << (bit % 8)
    labels.write_bytes(bytes(raw))
    os.utime(labels, ns=(before.st_atime_ns, before.st_mtime_ns))
    try:
        ds = data.load(prepare_if_needed=False)
    except data.DataError as error:
        assert str(labels) in str(error) and "damaged" in str(error), str(error)
    else:  # a flip NumPy's header tolerates (a space, a digit's case) is data as it was
        assert len(ds.train.labels) == TRAIN_PER_CLASS * len(WNIDS)


def test_a_file_named_like_the_cache_folder_is_not_deleted(tiny_env, synthetic, monkeypatch):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    tiny_env.mkdir(parents=True)
    squatter = tiny_env / data.CACHE_DIR_NAME
    squatter.write_text("a user's notes")
    with pytest.raises(data.DataError, match=f"{squatter} is a file.*move it away"):
        data.prepare()
    assert squatter.read_text() == "a user's notes"


@pytest.mark.parametrize("restore_mtime", [False, True], ids=["mtime-changed", "mtime-restored"])
def test_damaged_header_is_found_and_the_cache_rebuilt(tiny_env, synthetic, monkeypatch, capsys, restore_mtime):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    folder = data.prepare()
    damage_header(folder / "train_images.npy", restore_mtime)
    ds = data.load()
    err = capsys.readouterr().err
    assert f"cache file {folder / 'train_images.npy'} is damaged" in err and "rebuilding" in err
    assert "pickle" not in err  # NumPy's advice to unpickle is not passed on
    assert ds.train.images.shape == (TRAIN_PER_CLASS * len(WNIDS), 64, 64, 3)
    data.verify_cache()


@pytest.mark.parametrize("damage", ["flipped-byte", "header", "header-mtime-restored"])
def test_damage_without_a_source_names_the_file(tiny_env, synthetic, tmp_path, monkeypatch, damage):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    folder = data.prepare()
    monkeypatch.delenv("TINYLIB_DATA")
    shutil.rmtree(synthetic)  # nothing left to rebuild from
    images = folder / "train_images.npy"
    if damage == "flipped-byte":
        flip_middle_byte(images, restore_mtime=False)
    else:
        damage_header(images, restore_mtime=damage.endswith("restored"))
    for call in (data.load, lambda: data.load(prepare_if_needed=False)):
        with pytest.raises(data.DataError) as raised:
            call()
        message = str(raised.value)
        assert str(images) in message and "damaged" in message, message
        assert "python -m tinylib prepare --force" in message and "pickle" not in message


def test_labels_are_never_unpickled(tiny_env, synthetic, monkeypatch):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    folder = data.prepare()
    loads = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: loads.append(k.get("allow_pickle")) or real_load(*a, **k))
    data.load()
    assert loads and all(flag is False for flag in loads)
    assert (folder / "train_labels.npy").exists()


# --- 4. a full disk, a read-only cache folder, a file in the way ------------------------------


def no_decoding(*args, **kwargs):
    raise AssertionError("decoded although the cache cannot be written")


def test_too_little_free_space_is_refused_before_anything_is_written(tiny_env, synthetic, monkeypatch):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 5000, 5000))
    monkeypatch.setattr(decoding, "decode_image", no_decoding)
    with pytest.raises(data.DataError) as raised:
        data.load()
    message = str(raised.value)
    need = cache._space_needed({"train": 24, "val": 12, "test": 5})
    assert f"needs about {cache._size_text(need)}" in message and "0.0 MB is free" in message, message
    assert "TINYLIB_HOME" in message
    assert_nothing_written(tiny_env)


def test_the_full_cache_needs_about_1_5_gb():
    need = cache._space_needed({"train": 100_000, "val": 10_000, "test": 10_000})
    assert 1.47e9 < need < 1.6e9  # 120,000 images of 12,288 bytes (1.37 GiB), plus a margin


@pytest.mark.parametrize("where", ["home", "parent of home"])
def test_a_file_where_the_cache_folder_should_be(tiny_env, synthetic, tmp_path, monkeypatch, where):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TINYLIB_HOME", str(blocker if where == "home" else blocker / "home"))
    monkeypatch.setattr(decoding, "decode_image", no_decoding)
    with pytest.raises(data.DataError) as raised:
        data.load()
    message = str(raised.value)
    assert f"{blocker} is in the way" in message and "TINYLIB_HOME" in message, message
    assert blocker.read_text() == "not a folder"


def _raise(error: OSError):
    def fail(*args, **kwargs):
        raise error
    return fail


@pytest.mark.parametrize("call, pool", [("_write_at", False), ("_write_at", True), ("posix_fallocate", False)],
                         ids=["write-in-process", "write-in-a-forked-worker", "reserving-space-up-front"])
def test_a_full_disk_is_a_clear_error_and_nothing_is_kept(tiny_env, synthetic, monkeypatch, call, pool):
    if call == "posix_fallocate" and not hasattr(os, "posix_fallocate"):
        pytest.skip("no posix_fallocate here")
    if pool and sys.platform != "linux":
        pytest.skip("the forked pool inherits the monkeypatch only on Linux")
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(*(decoding, "_write_at") if call == "_write_at" else (os, "posix_fallocate"), _raise(full))
    if pool:
        monkeypatch.setattr(decoding, "POOL_MIN_IMAGES", 0)
        monkeypatch.setattr(decoding, "START_METHOD", "fork")
    with pytest.raises(data.DataError) as raised:
        data.prepare(workers=2)
    message = str(raised.value)
    assert "disk is full" in message and "is free" in message and "TINYLIB_HOME" in message, message
    assert f".{data.CACHE_DIR_NAME}.tmp-" in message  # the path being written
    assert_nothing_written(tiny_env)


@pytest.mark.parametrize("error", [PermissionError(errno.EACCES, os.strerror(errno.EACCES)),
                                   OSError(errno.EROFS, os.strerror(errno.EROFS))], ids=["EACCES", "EROFS"])
def test_a_read_only_cache_folder_is_a_clear_error_and_nothing_is_kept(tiny_env, synthetic, monkeypatch, error):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    monkeypatch.setattr(decoding, "_write_at", _raise(error))
    with pytest.raises(data.DataError) as raised:
        data.load()
    message = str(raised.value)
    assert "read-only" in message and "TINYLIB_HOME" in message and str(tiny_env) in message, message
    assert_nothing_written(tiny_env)


def test_a_read_only_home_for_the_lock_still_loads_a_complete_cache(tiny_env, synthetic, monkeypatch):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    data.prepare()
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).endswith(data.LOCK_NAME):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    assert data.prepare() == data.cache_dir()  # nothing to do: no lock needed, no error


# --- 6. progress that reads well in a log ------------------------------------------------------


def test_progress_in_a_log_is_plain_lines(tiny_env, synthetic, monkeypatch, capsys):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    data.prepare()
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "decoding train: 24/24 images" in err and "decoding test: 5/5 images" in err
    assert all(line.strip() for line in err.splitlines()), err  # no blank lines either


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_redrawn_in_place(tiny_env, synthetic, monkeypatch):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    data.prepare()
    assert "\rdecoding train: 24/24 images" in terminal.getvalue()
    # A shorter report after a longer one leaves none of the longer one's tail on the line.
    terminal.seek(0), terminal.truncate()
    progress.report("a long line, 123,456 images/s", final=False, due=True)
    progress.report("short", final=True, due=True)
    assert terminal.getvalue() == "\ra long line, 123,456 images/s\x1b[K\rshort\x1b[K\n"


def test_a_log_gets_a_line_every_20000_images(monkeypatch, capsys):
    start = time.time()
    for done in range(2000, 50_001, 2000):
        progress.report_count("train", done, 50_000, start, 2000)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[2] for line in lines] == ["20,000/50,000", "40,000/50,000", "50,000/50,000"]


# --- 5. the preparation benchmark times what it says ----------------------------------------


def test_prepare_benchmark_loads_again_from_the_cache(tiny_env, synthetic, monkeypatch, capsys):
    """With TINYLIB_DATA naming a folder, the benchmark prepares from a zip of it; its
    "load again" must be a cache hit, not a second decode from another source."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("prepare_data", REPO / "benchmarks" / "prepare_data.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    monkeypatch.setattr(sys, "argv", ["prepare_data.py"])
    real_decode, decoded = data.decode_image, []
    monkeypatch.setattr(decoding, "decode_image", lambda raw, name: decoded.append(name) or real_decode(raw, name))
    bench.main()
    assert len(decoded) == ALL_IMAGES  # once, by the timed preparation
    assert "load again (memory map):" in capsys.readouterr().out


def test_the_decoding_workers_are_this_processs_cpus_at_most_eight(monkeypatch):
    """A container or a batch job sees the host's cores in os.cpu_count(), not its share."""
    if hasattr(os, "sched_getaffinity"):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
        monkeypatch.setattr(os, "cpu_count", lambda: 96)
        assert cache.default_workers() == 3
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
        assert cache.default_workers() == cache.MAX_DEFAULT_WORKERS
    else:
        monkeypatch.setattr(os, "cpu_count", lambda: 96)
        assert cache.default_workers() == cache.MAX_DEFAULT_WORKERS


def test_a_file_system_without_locks_prepares_without_one(tmp_path, monkeypatch):
    """NFS without its lock daemon answers flock with ENOLCK: the cache's optional lock goes
    without (as on a read-only folder); a run folder's lock, which is not optional, says so."""
    fcntl = pytest.importorskip("fcntl")
    from tinylib import files

    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with files.FolderLock(tmp_path, "cache.lock", remove=True, optional=True).acquire(wait=True):
        pass
    assert not (tmp_path / "cache.lock").exists()  # nothing left behind
    with pytest.raises(OSError, match="No locks available"):
        files.FolderLock(tmp_path / "run").acquire()
