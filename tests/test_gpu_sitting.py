"""tools/gpu_sitting.sh, the way to a lent GPU machine: the dataset travels there in parts,
one a call, and is used only if the parts join into this machine's archive; the run's
published records come back in $OUT. Played here with the synthetic dataset and the JAX
backend, the calls' working trees staged in a folder of their own."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import WNIDS, write_dataset

from tinylib.processes import tied_to_this_process

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_sitting.sh"


def write_smoke_sized_dataset(root: Path) -> Path:
    """The official layout with as many classes and images as the smoke profile takes (5 classes,
    8 train and 4 val images each), so that a smoke run trains on it."""
    return write_dataset(root, with_test=False, wnids=[*WNIDS, "n02999999"], train_per_class=8, val_per_class=4)


def run_script(tree: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(tree / "tools" / SCRIPT.name), *args], env=env, capture_output=True,
                          text=True, timeout=600, preexec_fn=tied_to_this_process)


@pytest.mark.slow
def test_the_parts_join_into_the_archive_there_or_nothing_trains_and_the_records_come_back(tmp_path):
    pytest.importorskip("jax")
    archive = tmp_path / "tiny-imagenet-200.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(write_smoke_sized_dataset(tmp_path / "source"), arcname="tiny-imagenet-200")
    tree = tmp_path / "tree"  # a call's working tree: the script and the published records
    (tree / "tools").mkdir(parents=True)
    shutil.copy(SCRIPT, tree / "tools")
    (tree / "book" / "results").mkdir(parents=True)
    (tree / "book" / "results" / "model1-full-tensorflow.json").write_text("{}")  # published before: stays here
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
           "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "TINYLIB_ARCHIVE": str(archive),
           "PART_SIZE": str(archive.stat().st_size // 3 + 1), "GPU_SITTING_DIR": str(tmp_path / "there"),
           "OUT": str(out)}
    for name in ("TINYLIB_HOME", "TINYLIB_DATA", "TINYLIB_RUNS", "TINYLIB_PROFILE", "KERAS_BACKEND"):
        env.pop(name, None)

    made = run_script(tree, env, "parts")
    assert made.returncode == 0, made.stderr
    parts = sorted((tree / ".parts").glob("part-*"))
    assert len(parts) == 3
    assert (tree / ".parts" / "md5").read_text().strip() == hashlib.md5(archive.read_bytes()).hexdigest()
    assert b"".join(p.read_bytes() for p in parts) == archive.read_bytes()

    # Each call carries the MD5 and one part; the working tree of the next call lacks the last's.
    kept = tmp_path / "kept"
    shutil.move(tree / ".parts", kept)

    def carry(part: Path | None) -> None:
        shutil.rmtree(tree / ".parts", ignore_errors=True)
        (tree / ".parts").mkdir()
        shutil.copy(kept / "md5", tree / ".parts")
        if part is not None:
            shutil.copy(part, tree / ".parts")

    for part in parts[:2]:
        carry(kept / part.name)
        received = run_script(tree, env, "receive")
        assert received.returncode == 0, received.stderr
    command = ("run", "reproduce", "--only", "model2", "--profile", "smoke")

    carry(None)  # the third part never arrived: nothing is unpacked, trained or sent back
    short = run_script(tree, env, *command)
    assert short.returncode == 1
    assert "a part is missing or damaged" in short.stderr
    assert not (tmp_path / "there" / "data").exists() and not list(out.iterdir())

    carry(kept / parts[2].name)
    whole = run_script(tree, env, *command)
    assert whole.returncode == 0, (whole.stdout[-2000:], whole.stderr[-3000:])
    assert [p.name for p in out.iterdir()] == ["records.tar"]  # one file: the tool brings back eight at most
    with tarfile.open(out / "records.tar") as tar:
        back = {member.name: tar.extractfile(member).read() for member in tar.getmembers()}
    assert set(back) == {"model2-smoke-jax.json", "summary.json", "summary.md"}
    record = json.loads(back["model2-smoke-jax.json"])
    assert record["backend"] == "jax" and record["finished"]
    assert back["model2-smoke-jax.json"] == (tree / "book" / "results" / "model2-smoke-jax.json").read_bytes()
