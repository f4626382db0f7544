"""tinylib.data on a synthetic dataset in the official layout: sources, cache, subsets, errors."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_IMAGES, TRAIN_PER_CLASS, VAL_PER_CLASS, WNIDS, class_colour, jpeg_bytes, zip_folder
from tinylib import data
from tinylib.data import decoding


def assert_nothing_written(home: Path) -> None:
    """No cache, no temporary folder: a failed preparation leaves nothing behind."""
    leftovers = [p for p in home.rglob("*")] if home.exists() else []
    assert not any(p.name.startswith((data.CACHE_DIR_NAME, f".{data.CACHE_DIR_NAME}")) for p in leftovers), leftovers
    assert not (home / data.CACHE_DIR_NAME / "manifest.json").exists()


def brightness(pixels: np.ndarray) -> float:
    return float((np.asarray(pixels, dtype=float).reshape(-1, 3) @ np.array([0.299, 0.587, 0.114])).mean())


def label_from_pixels(image: np.ndarray) -> int:
    """The class whose colour has this image's brightness (works for grayscale too)."""
    distances = [abs(brightness(image[16:, 16:]) - brightness(class_colour(c))) for c in range(len(WNIDS))]
    return int(np.argmin(distances))


# --- sources --------------------------------------------------------------------------------


def test_each_image_says_the_file_it_was_decoded_from(tiny_env, synthetic, monkeypatch):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    ds = data.load()
    source = data.find_source()
    for split in ("train", "val", "test"):
        for index in range(len(getattr(ds, split))):
            path = ds.source_path(split, index)
            assert (synthetic / path).is_file(), path
            assert np.array_equal(data.decode_image(source.read(path), path), getattr(ds, split).images[index])
    subset = ds.subset(classes=2, per_class=2, val_per_class=1)  # labels renumbered: the path still right
    for index in range(len(subset.train)):
        assert np.array_equal(data.decode_image(source.read(subset.source_path("train", index)), "image"),
                              subset.train.images[index])
    with pytest.raises(ValueError, match="'train', 'val' and 'test'"):
        ds.source_path("validation", 0)


def test_folder_source_decodes_every_image_once(tiny_env, synthetic, monkeypatch):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    ds = data.load()
    assert ds.wnids == tuple(sorted(WNIDS))
    assert ds.class_names[0] == "goldfish"
    assert len(ds.train) == TRAIN_PER_CLASS * len(WNIDS)
    assert len(ds.val) == VAL_PER_CLASS * len(WNIDS)
    assert len(ds.test) == TEST_IMAGES
    for split in (ds.train, ds.val, ds.test):
        assert split.images.shape[1:] == (64, 64, 3) and split.images.dtype == np.uint8
    assert np.bincount(ds.train.labels).tolist() == [TRAIN_PER_CLASS] * len(WNIDS)
    assert np.bincount(ds.val.labels).tolist() == [VAL_PER_CLASS] * len(WNIDS)
    assert set(ds.test.labels.tolist()) == {-1}
    # labels agree with what the pixels show, in train and in the flat val folder
    for split in (ds.train, ds.val):
        assert [label_from_pixels(im) for im in split.images] == split.labels.tolist()
    # boxes parsed from <wnid>_boxes.txt and val_annotations.txt
    assert ds.train.boxes[1].tolist() == [1, 2, 59, 60]
    assert ds.val.boxes[0].tolist() == [1, 2, 50, 60]


def test_the_files_are_found_where_the_cache_was_built_from_without_the_setting(tiny_env, synthetic, monkeypatch):
    """A later session without TINYLIB_DATA: data.load() serves the cache, and find_source()
    (chapters 2 and 3 read files) opens the dataset the cache was built from, not a download."""
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    data.load()
    monkeypatch.delenv("TINYLIB_DATA")
    source = data.find_source(download_if_missing=False)
    assert source.describe() == data.open_source(synthetic).describe()
    shutil.rmtree(synthetic)  # gone since: no source is found, and none is downloaded
    with pytest.raises(data.DataError, match="No Tiny ImageNet found"):
        data.find_source(download_if_missing=False)


def test_a_dataset_changed_at_the_caches_own_path_is_decoded_again(tiny_env, synthetic, tmp_path, monkeypatch,
                                                                     capsys):
    """The cache knows its source by path and by what it held: a zip replaced at the same
    path, or a folder whose files changed, is decoded again; the same files are not."""
    name = f"{WNIDS[0]}_1.JPEG"
    image = synthetic / "train" / WNIDS[0] / "images" / name
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    before = data.load().train
    capsys.readouterr()
    data.load()  # nothing changed: served from the cache
    assert "rebuilding" not in capsys.readouterr().err
    (synthetic / "my notes.md").write_text("mine")  # files the layout does not read change nothing
    (image.parent / "Thumbs.db").write_bytes(b"windows")
    data.load()
    assert "rebuilding" not in capsys.readouterr().err
    image.write_bytes(jpeg_bytes(3))  # another picture under the same name
    after = data.load().train
    assert "holds other files than when the cache was built from it: rebuilding" in capsys.readouterr().err
    index = before.files.index(name)
    assert not np.array_equal(before.images[index], after.images[index])
    # The zip: replaced at the same path by one with another member.
    archive = zip_folder(synthetic, tmp_path / "tiny-imagenet-200.zip")
    monkeypatch.setenv("TINYLIB_DATA", str(archive))
    data.load()
    image.write_bytes(jpeg_bytes(0))
    zip_folder(synthetic, archive)
    capsys.readouterr()
    again = data.load().train
    assert "holds other files" in capsys.readouterr().err
    np.testing.assert_array_equal(again.images[index], before.images[index])


def test_a_folder_linked_into_the_dataset_is_fingerprinted_through_its_link(synthetic, tmp_path):
    """A dataset assembled from linked folders (a class kept elsewhere) is read through the
    links, so a change there is a change of the dataset; a link back up is walked once."""
    moved = tmp_path / "elsewhere"
    shutil.move(str(synthetic / "train" / WNIDS[0]), moved)
    (synthetic / "train" / WNIDS[0]).symlink_to(moved, target_is_directory=True)
    (synthetic / "train" / WNIDS[1] / "loop").symlink_to(synthetic / "train", target_is_directory=True)
    (synthetic / "a view of train").symlink_to(synthetic / "train", target_is_directory=True)  # walked before it
    source = data.open_source(synthetic)
    before = source.fingerprint()
    assert before is not None
    image = moved / "images" / f"{WNIDS[0]}_1.JPEG"
    image.write_bytes(image.read_bytes() + b"\0")  # one more byte, in the linked folder
    linked = source.fingerprint()
    assert linked not in (None, before)
    image = synthetic / "train" / WNIDS[1] / "images" / f"{WNIDS[1]}_1.JPEG"
    image.write_bytes(image.read_bytes() + b"\0")  # and in a folder of the layout reached by a link too
    assert source.fingerprint() not in (None, before, linked)


def test_a_cache_older_than_the_fingerprint_or_a_source_unreadable_now_serves(tiny_env, synthetic, monkeypatch):
    from tinylib.data import cache

    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    older = {"source": str(synthetic.resolve())}  # written before the fingerprint: taken as it is
    assert cache.other_source(older) is None
    from tinylib.data import sources

    def unreadable(top, onerror=None, **options):  # a folder that cannot be listed whole: nothing is known
        onerror(PermissionError(13, "Permission denied", str(top)))
        return iter(())

    monkeypatch.setattr(sources.os, "walk", unreadable)
    assert data.open_source(synthetic).fingerprint() is None
    assert cache.other_source({**older, "fingerprint": "built"}) is None


def test_grayscale_images_become_rgb(tiny_env, synthetic, monkeypatch):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    ds = data.load()
    grey = ds.train.images[ds.train.files.index(f"{WNIDS[0]}_0.JPEG")]
    assert grey.shape == (64, 64, 3)
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])


def test_parent_folder_and_zip_give_the_same_arrays(tiny_env, synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic.parent))
    from_folder = data.load()
    folder_images = np.array(from_folder.train.images)
    monkeypatch.setenv("TINYLIB_DATA", str(zip_folder(synthetic, tmp_path / "tin.zip")))
    from_zip = data.load()  # a different source than the cache's: rebuilt
    assert data.read_manifest()["source"].endswith("tin.zip")
    assert np.array_equal(folder_images, from_zip.train.images)
    assert np.array_equal(from_folder.val.labels, from_zip.val.labels)
    assert from_folder.train.files == from_zip.train.files


def test_previous_extraction_in_the_cache_is_used(tiny_env, synthetic):
    import shutil

    shutil.copytree(synthetic, tiny_env / "tiny-imagenet-200")
    ds = data.load()
    assert data.read_manifest()["source"] == str((tiny_env / "tiny-imagenet-200").resolve())
    assert ds.num_classes == len(WNIDS)


def test_test_folder_is_optional(tiny_env, synthetic, monkeypatch):
    import shutil

    shutil.rmtree(synthetic / "test")
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    ds = data.load()
    assert ds.test is None
    assert "no test images" in ds.summary()


# --- download -------------------------------------------------------------------------------


class _ZipServer:
    """A localhost HTTP server for one file, honouring Range, optionally cutting off."""

    def __init__(self, payload: bytes, cut_first_at: int | None = None):
        self.payload, self.cut_first_at, self.ranges = payload, cut_first_at, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                start = 0
                header = self.headers.get("Range")
                server.ranges.append(header)
                if header:
                    start = int(header.split("=")[1].split("-")[0])
                    self.send_response(206)
                else:
                    self.send_response(200)
                body = server.payload[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_first_at is not None:
                    cut, server.cut_first_at = server.cut_first_at, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.connection.close()
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/tiny-imagenet-200.zip"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served_zip(synthetic, tmp_path):
    payload = zip_folder(synthetic, tmp_path / "served.zip").read_bytes()
    return payload, hashlib.md5(payload).hexdigest()


def test_download_resumes_after_interruption_and_is_checked(tiny_env, served_zip, monkeypatch):
    payload, md5 = served_zip
    server = _ZipServer(payload, cut_first_at=len(payload) // 3)
    try:
        with pytest.raises(data.DataError, match="resume"):
            data.download(server.url, md5=md5, size=len(payload))
        part = tiny_env / "downloads" / "tiny-imagenet-200.zip.part"
        assert 0 < part.stat().st_size < len(payload)
        monkeypatch.setattr(data, "OFFICIAL_URL", server.url)
        monkeypatch.setattr(data.download, "__defaults__", (server.url, md5, len(payload)))
        ds = data.load()  # no TINYLIB_DATA, no extraction: downloads, resuming the .part
    finally:
        server.close()
    assert server.ranges[-1] == f"bytes={len(payload) // 3}-"  # resumed, not restarted
    assert not part.exists()
    assert (tiny_env / "tiny-imagenet-200" / "wnids.txt").is_file()
    assert ds.num_classes == len(WNIDS)


def test_a_second_download_waits_for_the_first_and_uses_its_folder(tiny_env, synthetic, served_zip, capsys):
    """Two chapters opened at once both find no data: the second waited for nothing, and both
    wrote the same .part (a corrupt file, or a raw error when the first renamed it)."""
    from tinylib import files
    from tinylib.data import fetch

    payload, md5 = served_zip
    server = _ZipServer(payload)
    tiny_env.mkdir()
    first = files.FolderLock(tiny_env, fetch.DOWNLOAD_LOCK_NAME, remove=True).acquire()  # a download under way
    result = {}
    second = threading.Thread(target=lambda: result.update(folder=data.download(server.url, md5=md5,
                                                                               size=len(payload))))
    try:
        second.start()
        second.join(timeout=2)
        assert second.is_alive()  # waiting for the first
        shutil.copytree(synthetic, tiny_env / "tiny-imagenet-200")  # the first one's folder
        first.release()
        second.join(timeout=30)
    finally:
        first.release()
        server.close()
    assert result["folder"] == tiny_env / "tiny-imagenet-200" and server.ranges == []  # nothing fetched
    assert "waiting for another download" in capsys.readouterr().err


def test_a_whole_download_is_not_fetched_again(tiny_env, served_zip):
    """Killed during the checksum (the .part whole), or after it (the zip checked, its
    extraction failed): the next try checks what it has and asks the server for nothing."""
    payload, md5 = served_zip
    server = _ZipServer(payload)
    downloads = tiny_env / "downloads"
    downloads.mkdir(parents=True)
    from tinylib.data import fetch

    dest = downloads / "tiny-imagenet-200.zip"
    try:
        (downloads / "tiny-imagenet-200.zip.part").write_bytes(payload)
        assert fetch.download_file(server.url, dest, md5=md5, size=len(payload), progress=False) == dest
        assert dest.read_bytes() == payload and not (downloads / "tiny-imagenet-200.zip.part").exists()
        assert fetch.download_file(server.url, dest, md5=md5, size=len(payload), progress=False) == dest
        assert server.ranges == []  # no request at all
    finally:
        server.close()


def test_a_full_disk_during_the_download_is_not_called_a_network_fault(tiny_env, served_zip, monkeypatch):
    import builtins
    import errno

    payload, md5 = served_zip
    server = _ZipServer(payload)
    real_open = builtins.open

    class FullDisk:
        def __init__(self, file):
            self.file = file

        def write(self, block):
            raise OSError(errno.ENOSPC, "No space left on device", str(self.file.name))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    def opening(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        return FullDisk(handle) if str(path).endswith(".part") and "b" in mode else handle

    monkeypatch.setattr(builtins, "open", opening)
    try:
        with pytest.raises(data.DataError) as raised:
            data.download(server.url, md5=md5, size=len(payload))
    finally:
        monkeypatch.undo()
        server.close()
    message = str(raised.value)
    assert "No space left on device" in message and "next try resumes" in message
    assert "connect to the internet" not in message and "could not download" not in message


def test_download_with_wrong_checksum_is_refused(tiny_env, served_zip):
    payload, _ = served_zip
    server = _ZipServer(payload)
    try:
        with pytest.raises(data.DataError, match="checksum mismatch"):
            data.download(server.url, md5="0" * 32, size=len(payload))
    finally:
        server.close()
    assert not (tiny_env / "downloads" / "tiny-imagenet-200.zip.part").exists()
    assert not (tiny_env / "tiny-imagenet-200").exists()


def test_offline_without_any_source_says_what_to_do(tiny_env, monkeypatch):
    monkeypatch.setattr(data.download, "__defaults__", ("http://127.0.0.1:9/nothing.zip", None, None))
    with pytest.raises(data.DataError, match="TINYLIB_DATA"):
        data.load()
    assert_nothing_written(tiny_env)


# --- the cache ------------------------------------------------------------------------------


def test_second_load_is_a_memory_map_without_decoding(tiny_env, synthetic, monkeypatch):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    data.load()
    manifest = data.read_manifest()
    assert manifest["counts"] == {"train": 24, "val": 12, "test": 5}
    assert all(len(info["sha256"]) == 64 for info in manifest["files"].values())
    data.verify_cache()

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(decoding, "decode_image", no_decoding)
    again = data.load()
    assert isinstance(again.train.images, np.memmap)


def test_interrupted_preparation_leaves_no_cache_that_looks_complete(tiny_env, synthetic, monkeypatch):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    real_decode, calls = data.decode_image, []

    def interrupted(raw, name):
        calls.append(name)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return real_decode(raw, name)

    monkeypatch.setattr(decoding, "decode_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        data.prepare()
    assert_nothing_written(tiny_env)
    monkeypatch.setattr(decoding, "decode_image", real_decode)
    assert len(data.load().train) == 24


def test_a_killed_preparation_and_a_damaged_cache_are_rebuilt(tiny_env, synthetic, monkeypatch):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    folder = data.prepare()
    # a kill -9 during a later preparation leaves a temporary folder: ignored and removed
    stale = folder.parent / f".{data.CACHE_DIR_NAME}.tmp-99999"
    stale.mkdir()
    (stale / "train_images.npy").write_bytes(b"partial")
    # a cache file cut short no longer matches its manifest: the cache counts as missing
    images = folder / "train_images.npy"
    images.write_bytes(images.read_bytes()[:1000])
    assert data.read_manifest() is None
    ds = data.load()
    assert len(ds.train) == 24 and not stale.exists()
    # corrupt bytes of the right size are caught by verify_cache
    raw = bytearray(images.read_bytes())
    raw[-1] ^= 0xFF
    images.write_bytes(bytes(raw))
    with pytest.raises(data.DataError, match="corrupt"):
        data.verify_cache()


# --- subsets --------------------------------------------------------------------------------


def test_subsets_are_deterministic_and_renumbered(tiny_env, synthetic, monkeypatch):
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    ds = data.load()
    a = ds.subset(classes=2, per_class=4, val_per_class=2, seed=0)
    b = ds.subset(classes=2, per_class=4, val_per_class=2, seed=0)
    assert a.wnids == b.wnids and a.train.files == b.train.files and a.val.files == b.val.files
    assert a.num_classes == 2 and np.bincount(a.train.labels).tolist() == [4, 4]
    assert np.bincount(a.val.labels).tolist() == [2, 2]
    assert [label_from_pixels(im) for im in a.train.images] == [
        ds.wnids.index(a.wnids[label]) for label in a.train.labels
    ]
    # the same selection on every machine: it depends on hashes of names, not on a RNG
    assert a.wnids == ("n01641577", "n02124075")
    assert a.train.files[:4] == ("n01641577_1.JPEG", "n01641577_2.JPEG", "n01641577_3.JPEG", "n01641577_4.JPEG")
    others = {ds.subset(classes=2, per_class=4, seed=s).train.files for s in range(1, 6)}
    assert any(files != a.train.files for files in others)
    assert ds.subset() is ds
    with pytest.raises(ValueError, match="only 6"):
        ds.subset(classes=2, per_class=7)
    with pytest.raises(ValueError, match="classes"):
        ds.subset(classes=99)


def test_load_subset_follows_the_profile(tiny_env, synthetic, monkeypatch):
    from tinylib import profiles

    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    tiny = profiles.Profile("tiny", classes=3, train_per_class=2, val_per_class=1, epochs=1, batch_size=2)
    ds = data.load_subset(tiny)
    assert ds.num_classes == 3 and len(ds.train) == 6 and len(ds.val) == 3


# --- bad input: a clear error that names the file, and nothing half-written -------------------


def _expect_error(tiny_env, monkeypatch, source, *phrases):
    monkeypatch.setenv("TINYLIB_DATA", str(source))
    with pytest.raises(data.DataError) as raised:
        data.load()
    for phrase in phrases:
        assert phrase in str(raised.value), str(raised.value)
    assert_nothing_written(tiny_env)


def test_missing_folder(tiny_env, tmp_path, monkeypatch):
    _expect_error(tiny_env, monkeypatch, tmp_path / "nowhere", "nowhere", "does not exist", "TINYLIB_DATA")


def test_a_dataset_folder_this_user_cannot_read_is_named(tiny_env, synthetic, monkeypatch):
    """A folder with mode 000 passes stat and then failed as a raw PermissionError (or as a
    missing wnids.txt). Faked: as root, every folder is readable."""
    from tinylib.data import sources

    real = sources.os.access
    monkeypatch.setattr(sources.os, "access", lambda path, mode: False if Path(path) == synthetic else real(path, mode))
    _expect_error(tiny_env, monkeypatch, synthetic, str(synthetic), "permission denied", "TINYLIB_DATA")


def test_missing_wnids(tiny_env, synthetic, monkeypatch):
    (synthetic / "wnids.txt").unlink()
    _expect_error(tiny_env, monkeypatch, synthetic, "wnids.txt", "official layout")


def test_missing_words(tiny_env, synthetic, monkeypatch):
    (synthetic / "words.txt").unlink()
    _expect_error(tiny_env, monkeypatch, synthetic, "words.txt")


def test_missing_class_folder(tiny_env, synthetic, monkeypatch):
    import shutil

    shutil.rmtree(synthetic / "train" / WNIDS[2])
    _expect_error(tiny_env, monkeypatch, synthetic, f"train/{WNIDS[2]}")


def test_a_training_folder_short_of_its_boxes_file_is_refused(tiny_env, synthetic, monkeypatch):
    """An interrupted extraction or copy: the cache would silently train on fewer images."""
    (synthetic / "train" / WNIDS[1] / "images" / f"{WNIDS[1]}_3.JPEG").unlink()
    _expect_error(tiny_env, monkeypatch, synthetic, f"train/{WNIDS[1]}/images", "lacks 1 of the",
                  f"{WNIDS[1]}_3.JPEG", "interrupted")


def test_hidden_files_beside_the_images_are_not_images(tiny_env, synthetic, monkeypatch):
    """macOS writes '._name.JPEG' metadata files when it copies to some drives."""
    (synthetic / "train" / WNIDS[1] / "images" / f"._{WNIDS[1]}_3.JPEG").write_bytes(b"\x00\x05\x16\x07")
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    ds = data.load()
    assert not any(name.startswith("._") for name in ds.train.files)


def test_a_complete_cache_serves_while_the_data_it_was_built_from_is_unreachable(tiny_env, synthetic, monkeypatch,
                                                                                   capsys):
    """A drive unplugged, or a Drive not mounted in this Colab session: the cache is whole."""
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    first = data.load()
    moved = synthetic.with_name("elsewhere")
    synthetic.rename(moved)
    again = data.load()
    assert len(again.train) == len(first.train) and "cannot be reached now" in capsys.readouterr().err
    monkeypatch.setenv("TINYLIB_DATA", str(moved.parent / "never-there"))  # not the cache's source: refused
    with pytest.raises(data.DataError, match="does not exist"):
        data.load()


def test_undecodable_jpeg(tiny_env, synthetic, monkeypatch):
    (synthetic / "train" / WNIDS[1] / "images" / f"{WNIDS[1]}_3.JPEG").write_bytes(b"not a jpeg at all")
    _expect_error(tiny_env, monkeypatch, synthetic, f"{WNIDS[1]}_3.JPEG", "not a decodable JPEG")


def test_wrong_size_jpeg(tiny_env, synthetic, monkeypatch):
    (synthetic / "val" / "images" / "val_5.JPEG").write_bytes(jpeg_bytes(0, size=32))
    _expect_error(tiny_env, monkeypatch, synthetic, "val_5.JPEG", "expected a 64x64 image, got 32x32")


def test_truncated_zip(tiny_env, synthetic, tmp_path, monkeypatch):
    whole = zip_folder(synthetic, tmp_path / "whole.zip").read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(whole[: len(whole) // 2])
    _expect_error(tiny_env, monkeypatch, cut, "cut.zip", "not a complete zip")


def test_an_archive_that_is_not_a_zip_is_not_called_a_broken_download(tiny_env, synthetic, tmp_path, monkeypatch):
    """A .tar.xz (the form this course's data may come in) is a good archive of another kind:
    unpack it, not delete it."""
    import tarfile

    archive = tmp_path / "tiny-imagenet-200.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(synthetic / "wnids.txt", arcname="tiny-imagenet-200/wnids.txt")
    _expect_error(tiny_env, monkeypatch, archive, "is not a zip", f"tar xf {archive}")
    _expect_error(tiny_env, monkeypatch, synthetic / "wnids.txt", "point at the folder that holds it")


def test_a_relative_data_path_that_is_not_found_says_where_it_was_looked_for(tiny_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _expect_error(tiny_env, monkeypatch, "data/tiny-imagenet-200", "a relative path, looked up from", "absolute")


def test_zip_escaping_its_folder_is_refused_before_anything_is_written(tiny_env, synthetic, tmp_path, monkeypatch):
    evil = zip_folder(synthetic, tmp_path / "evil.zip")
    with zipfile.ZipFile(evil, "a") as archive:
        archive.writestr("tiny-imagenet-200/../../escaped.txt", "gotcha")
    _expect_error(tiny_env, monkeypatch, evil, "escaped.txt", "outside the target folder")
    with pytest.raises(data.DataError, match="outside"):
        data.extract_zip(evil, tmp_path / "unpacked")
    assert not (tmp_path / "unpacked").exists()
    assert not list(tmp_path.rglob("escaped.txt"))


def test_a_folder_in_the_way_of_the_unpacked_zip_is_named(synthetic, tmp_path):
    """A leftover dataset folder without wnids.txt (a copy cut short) made the rename fail with a
    raw 'Directory not empty' after the whole download."""
    archive = zip_folder(synthetic, tmp_path / "tiny.zip")
    leftover = tmp_path / "unpacked" / "tiny-imagenet-200"
    (leftover / "train").mkdir(parents=True)
    (leftover / "train" / "half.JPEG").write_bytes(b"x")
    with pytest.raises(data.DataError) as raised:
        data.extract_zip(archive, tmp_path / "unpacked")
    message = str(raised.value)
    assert str(leftover) in message and "move it away or delete it" in message and str(archive) in message
    assert sorted(p.name for p in (tmp_path / "unpacked").iterdir()) == ["tiny-imagenet-200"]  # no temporary left


def test_a_full_disk_while_unpacking_says_what_failed_and_keeps_the_download(synthetic, tmp_path, monkeypatch):
    import errno

    archive = zip_folder(synthetic, tmp_path / "tiny.zip")

    def full(self, path=None, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(zipfile.ZipFile, "extractall", full)
    with pytest.raises(data.DataError) as raised:
        data.extract_zip(archive, tmp_path / "unpacked")
    message = str(raised.value)
    assert "unpacking tiny.zip" in message and "No space left" in message and f"kept in {archive}" in message
    assert archive.is_file()


def test_val_laid_out_as_class_folders(tiny_env, synthetic, monkeypatch):
    # The usual reorganising script: the images moved into class folders, the annotations kept.
    annotations = (synthetic / "val" / "val_annotations.txt").read_bytes()
    shutil.rmtree(synthetic / "val")
    for wnid in WNIDS:
        (synthetic / "val" / wnid / "images").mkdir(parents=True)
        (synthetic / "val" / wnid / "images" / "val_0.JPEG").write_bytes(jpeg_bytes(0))
    (synthetic / "val" / "val_annotations.txt").write_bytes(annotations)
    _expect_error(tiny_env, monkeypatch, synthetic, "class folders", "val_annotations.txt")
    (synthetic / "val" / "val_annotations.txt").unlink()  # and without them
    _expect_error(tiny_env, monkeypatch, synthetic, "class folders", "val_annotations.txt")


def test_val_annotation_with_unknown_wnid(tiny_env, synthetic, monkeypatch):
    annotations = synthetic / "val" / "val_annotations.txt"
    lines = annotations.read_text().splitlines()
    lines[4] = lines[4].replace(lines[4].split("\t")[1], "n99999999")
    annotations.write_text("\n".join(lines) + "\n")
    _expect_error(tiny_env, monkeypatch, synthetic, "line 5", "n99999999", "not in wnids.txt")


@pytest.mark.parametrize("damage, phrases", [
    ("delete", ("val/images", "lacks 1 of the", "val_7.JPEG", "interrupted")),
    ("unlisted", ("val/images", "does not list", "val_7.JPEG")),
    ("short", ("val/images", "does not list", "Extract the official zip again")),
    ("twice", ("val_annotations.txt", "val_3.JPEG", "more than once")),
])
def test_the_validation_images_and_their_annotations_must_match(tiny_env, synthetic, monkeypatch, damage, phrases):
    """An image annotated but missing failed only after the training split was decoded; one
    listed twice counted twice; and an annotations file cut short, or an image without a line,
    left the validation split short without a word."""
    annotations = synthetic / "val" / "val_annotations.txt"
    lines = annotations.read_text().splitlines()
    if damage == "delete":
        (synthetic / "val" / "images" / "val_7.JPEG").unlink()
    elif damage == "unlisted":
        lines = [line for line in lines if not line.startswith("val_7.JPEG")]
    elif damage == "short":
        lines = lines[: len(lines) // 2]
    else:
        lines.append(lines[3])
    annotations.write_text("\n".join(lines) + "\n")
    _expect_error(tiny_env, monkeypatch, synthetic, *phrases)


def test_a_class_listed_twice_in_wnids_is_refused(tiny_env, synthetic, monkeypatch):
    """It made a class of 0 images (its label index taken by the second) and every image of
    the class twice."""
    wnids = synthetic / "wnids.txt"
    wnids.write_text(wnids.read_text() + WNIDS[1] + "\n")
    _expect_error(tiny_env, monkeypatch, synthetic, "wnids.txt", WNIDS[1], "more than once")


def test_a_short_box_line_is_refused_before_decoding(tiny_env, synthetic, monkeypatch):
    boxes = synthetic / "train" / WNIDS[0] / f"{WNIDS[0]}_boxes.txt"
    lines = boxes.read_text().splitlines()
    lines[2] = lines[2].split("\t")[0] + "\t0\t10"
    boxes.write_text("\n".join(lines) + "\n")
    _expect_error(tiny_env, monkeypatch, synthetic, f"{WNIDS[0]}_boxes.txt", "four integer box coordinates")


def test_text_files_with_a_byte_order_mark_or_not_utf8(tiny_env, synthetic, monkeypatch):
    """An editor's byte-order mark is not part of the first wnid; text that is not UTF-8 is
    named, not a raw UnicodeDecodeError."""
    from tinylib import data

    wnids = synthetic / "wnids.txt"
    wnids.write_bytes(b"\xef\xbb\xbf" + wnids.read_bytes())
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    assert list(data.load().wnids) == sorted(WNIDS)
    (synthetic / "words.txt").write_bytes("n00001740\tentit\xe9\n".encode("cp1252"))
    monkeypatch.setenv("TINYLIB_HOME", str(tiny_env.parent / "home2"))
    _expect_error(tiny_env.parent / "home2", monkeypatch, synthetic, "words.txt", "not UTF-8")


def test_the_cache_is_on_disk_before_it_is_renamed_into_place(tiny_env, synthetic, monkeypatch):
    """Its arrays are reserved at full size: renamed before their pages reach the disk, a
    crash would leave a cache of the right sizes holding zeros, which the manifest passes."""
    from tinylib import files
    from tinylib.data import cache

    order = []
    flush, install = files.flush_folder, cache._install
    monkeypatch.setattr(files, "flush_folder", lambda folder: (order.append(("flush", Path(folder).name)),
                                                              flush(folder)))
    monkeypatch.setattr(cache, "_install", lambda tmp, target: (order.append(("install", tmp.name)),
                                                              install(tmp, target)))
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    data.load()
    assert [step for step, _ in order] == ["flush", "install"] and order[0][1] == order[1][1]
