"""Fast checks of the repository's shape: book config, table of contents,
notebooks committed without outputs, and the declared dependencies."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tinylib.processes import tied_to_this_process

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
SKIP_DIRS = {"_build", ".ipynb_checkpoints", "results"}
SOURCE_SUFFIXES = (".ipynb", ".md", ".myst", ".rst")


def book_files(suffix: str) -> list[Path]:
    """Files under book/ with this suffix, outside build output and checkpoints."""
    return sorted(
        p for p in BOOK.rglob(f"*{suffix}")
        if not SKIP_DIRS.intersection(p.relative_to(BOOK).parts)
    )


def load_toc() -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML comes with the 'book' extra")
    return yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))


def toc_entries(node) -> list[str]:
    """Every 'root' / 'file' value in a jb-book table of contents."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("root", "file") and isinstance(value, str):
                found.append(value)
            else:
                found.extend(toc_entries(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(toc_entries(item))
    return found


def resolve_toc_entry(entry: str) -> Path | None:
    """The file in book/ a toc entry names (entries may omit the extension)."""
    candidate = BOOK / entry
    if candidate.suffix in SOURCE_SUFFIXES and candidate.is_file():
        return candidate
    for suffix in SOURCE_SUFFIXES:
        path = candidate.with_name(candidate.name + suffix)
        if path.is_file():
            return path
    return None


# --- Jupyter Book configuration ------------------------------------------------

@pytest.mark.parametrize("name", ["_config.yml", "_toc.yml"])
def test_book_config_is_a_relative_symlink_to_the_top_level_file(name):
    link = BOOK / name
    top = ROOT / name
    assert top.is_file() and not top.is_symlink(), f"{name} must be a real file at the top level"
    assert link.is_symlink(), f"book/{name} must be a symlink to ../{name} (one source of truth)"
    target = os.readlink(link)
    assert not os.path.isabs(target), f"book/{name} -> {target}: use a relative link so clones work"
    assert link.resolve() == top.resolve()
    assert link.read_bytes() == top.read_bytes()


def test_config_fails_the_build_on_errors_and_caches_execution():
    yaml = pytest.importorskip("yaml", reason="PyYAML comes with the 'book' extra")
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    execute = config["execute"]
    assert execute["execute_notebooks"] == "cache"
    assert execute["allow_errors"] is False
    assert config["sphinx"]["config"]["nb_execution_raise_on_error"] is True
    for pattern in ("_build", "results", "**.ipynb_checkpoints"):
        assert pattern in config["exclude_patterns"]


def test_toc_names_existing_files():
    toc = load_toc()
    assert toc.get("format") == "jb-book"
    entries = toc_entries(toc)
    assert entries and entries[0] == toc["root"]
    missing = [e for e in entries if resolve_toc_entry(e) is None]
    assert not missing, f"_toc.yml names files that are not in book/: {missing}"
    assert len(entries) == len(set(entries)), "_toc.yml names a file twice"


def test_every_notebook_is_in_the_toc():
    listed = {resolve_toc_entry(e) for e in toc_entries(load_toc())}
    orphans = [str(p.relative_to(ROOT)) for p in book_files(".ipynb") if p not in listed]
    assert not orphans, f"notebooks missing from _toc.yml (the build skips them): {orphans}"


# --- notebooks -----------------------------------------------------------------

def test_notebooks_are_committed_without_outputs():
    dirty = []
    for path in book_files(".ipynb"):
        nb = json.loads(path.read_text(encoding="utf-8"))
        for i, cell in enumerate(nb.get("cells", [])):
            if cell.get("cell_type") != "code":
                continue
            if cell.get("outputs") or cell.get("execution_count") is not None:
                dirty.append(f"{path.relative_to(ROOT)} cell {i}")
    assert not dirty, (
        "notebooks must be committed without outputs or execution counts "
        f"(clear them before committing): {dirty}"
    )


def test_notebooks_that_display_markdown_tables_render_them_as_tables():
    """MyST-NB renders display(Markdown(...)) as CommonMark unless the notebook asks for
    GitHub-flavoured Markdown: a table would come out as one paragraph of pipes."""
    missing = []
    for path in book_files(".ipynb"):
        nb = json.loads(path.read_text(encoding="utf-8"))
        code = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        if "Markdown(" in code and "|---" in code:
            if nb["metadata"].get("mystnb", {}).get("render_markdown_format") != "gfm":
                missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"set metadata mystnb.render_markdown_format = 'gfm' in {missing}"


# --- the introduction states the profiles as tinylib defines them ---------------

def test_readme_profile_table_matches_tinylib_profiles():
    """The README's hand-written table must follow tinylib/profiles.py (chapter 1 prints it live)."""
    from tinylib.profiles import PROFILES

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name, p in PROFILES.items():
        rows = [line for line in readme.splitlines() if line.startswith(f"| `{name}` |")]
        assert len(rows) == 1, f"README.md needs one table row for profile {name!r}"
        classes = p.classes or 200
        train = classes * (p.train_per_class or 500)
        val = classes * (p.val_per_class or 50)
        expected = f"{classes} classes, {train:,} train / {val:,} val images"
        assert expected in rows[0], f"README.md's row for {name!r} should say {expected!r}"
        assert f"| {p.epochs}" in rows[0], f"README.md's row for {name!r} should give {p.epochs} epochs"


# --- dependencies ----------------------------------------------------------------

def load_pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def requirements(specs: list[str]) -> dict:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    reqs = [Requirement(s) for s in specs]
    return {canonicalize_name(r.name): r for r in reqs}


REQUIRED = {
    "dependencies": ["keras", "numpy", "matplotlib", "seaborn", "pillow"],
    "tensorflow": ["tensorflow"],
    "jax": ["jax"],
    "book": ["jupyter-book", "jupyterlab"],
    "test": ["pytest", "nbval"],
}


def dependency_groups() -> dict[str, list[str]]:
    project = load_pyproject()["project"]
    return {"dependencies": project["dependencies"], **project.get("optional-dependencies", {})}


@pytest.mark.parametrize("group", list(REQUIRED))
def test_pyproject_declares_the_dependencies_the_design_names(group):
    declared = requirements(dependency_groups().get(group, []))
    missing = [name for name in REQUIRED[group] if name not in declared]
    assert not missing, f"pyproject.toml [{group}] lacks {missing}"


def test_every_dependency_is_a_range_not_a_pin():
    for group, specs in dependency_groups().items():
        for name, req in requirements(specs).items():
            operators = {s.operator for s in req.specifier}
            assert operators, f"[{group}] {req}: give a version range (e.g. '{name}>=X')"
            assert not operators & {"==", "==="}, f"[{group}] {req}: use a range, not a pin"


def test_a_jax_only_install_does_not_pull_tensorflow():
    """TensorFlow is an extra: `pip install -e .[jax]` on a JAX machine must not download it."""
    groups = dependency_groups()
    for group in ("dependencies", "jax"):
        assert "tensorflow" not in requirements(groups[group]), f"[{group}] pulls TensorFlow"


def test_the_default_commands_install_tensorflow():
    """The Makefile and the README's install line keep TensorFlow, the book's default backend."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    extras = next(line for line in makefile.splitlines() if line.startswith("EXTRAS"))
    assert "tensorflow" in [e.strip() for e in extras.split("=", 1)[1].split(",")], extras
    assert 'pip install -e ".[tensorflow,book,test]"' in (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_venv_is_installed_with_its_bytecode():
    """uv leaves out the .pyc files pip writes; where PYTHONDONTWRITEBYTECODE is set, every
    process the tests and the book start would compile Keras and TensorFlow again."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    uv_install = next(line for line in makefile.splitlines() if "-m uv pip install" in line and "-e" in line)
    assert "--compile-bytecode" in uv_install, uv_install


def test_make_tests_two_workers_keep_each_chapter_and_the_site_on_one_worker():
    """`make test` runs pytest-xdist: a chapter's cells share one kernel in order, and the
    site test builds from the chapters its own worker ran; the other tests spread out."""
    import importlib.util

    pytest.importorskip("xdist")
    spec = importlib.util.spec_from_file_location("book_conftest", BOOK / "conftest.py")
    book_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(book_conftest)
    split = book_conftest.ChaptersOnOneWorker._split_scope
    scopes = {split(None, nodeid) for nodeid in ("book/02_dataset.ipynb::Cell 0", "book/15_inside_the_models.ipynb::Cell 9",
                                                 "tests/test_site.py::test_chapter_page[3]")}
    assert scopes == {"book"}
    assert split(None, "tests/test_train.py::test_a") != split(None, "tests/test_train.py::test_b")
    # The JupyterLab tests share one server and one browser: one unit, on one worker.
    assert split(None, "tests/test_jupyterlab.py::test_x[07_model2]") == split(None, "tests/test_jupyterlab.py::test_x[09_model4]")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "--dist loadgroup" in makefile and "-n $(PYTEST_WORKERS)" in makefile


def test_the_chapters_are_skipped_saying_what_to_do_where_they_would_download(tiny_env, synthetic, monkeypatch):
    """A test never fetches the dataset or the weights: without them (no TINYLIB_DATA and no
    prepared cache; no installed weights for the chapters that load them) the chapters are
    skipped with the command that provides them, and run where CI has provided them."""
    from offline import not_runnable_offline as why  # book/conftest.py and the site test ask it
    assert "set TINYLIB_DATA" in why("06_model1") and "tinylib prepare" in why("06_model1")
    monkeypatch.setenv("TINYLIB_DATA", str(synthetic))
    assert why("06_model1") is None
    assert "python -m tinylib weights resnet50" in why("10_model5")
    from tinylib import pretrained

    for include_top in (False, True):  # both files, as `tinylib weights resnet50` installs them
        path = pretrained.weights_path(include_top)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    assert why("10_model5") is None and why("14_transfer_learning") is None


def test_every_notebook_cell_has_an_id():
    """nbformat 4.5 cells carry ids; a cell added without one makes nbformat warn on every read."""
    for path in book_files(".ipynb"):
        notebook = json.loads(path.read_text(encoding="utf-8"))
        missing = [i for i, cell in enumerate(notebook["cells"]) if "id" not in cell]
        assert not missing, f"{path.name}: cells {missing} have no id"


def test_the_chapters_collect_with_pytest_xdist_switched_off():
    """book/conftest.py's scheduler hook is optional: `-p no:xdist` must not stop pytest."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:xdist",
                           str(BOOK / "01_introduction.ipynb")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, preexec_fn=tied_to_this_process)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
