# One command each, on a machine with only Python 3 and make:
#   make book   set up .venv (first time, or when pyproject.toml changes) and build the site
#   make test   set up .venv the same way and run the whole test suite
# Re-running reuses .venv; the stamp file makes it reinstall when pyproject.toml changes.

PYTHON ?= python3
VENV   ?= .venv
EXTRAS ?= tensorflow,book,test,jax
BIN    := $(VENV)/bin
comma  := ,
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

# -W: warnings are errors; -n: nitpicky cross-references; --keep-going: report them all.
# With execute.allow_errors: false, a cell that raises makes this exit non-zero.
JB_FLAGS ?= -W -n --keep-going
PYTEST_ARGS ?=
# uv (from PyPI, into the venv) resolves and installs the same versions as pip, with
# parallel downloads: the venv is ready in about half of pip's time. uv reads its own
# settings (UV_INDEX_URL, ...), not pip.conf: INSTALLER=pip installs with pip alone.
# --compile-bytecode: uv, unlike pip, leaves the packages without their .pyc files, and
# where PYTHONDONTWRITEBYTECODE is set (this project's CI machines) Python then compiles
# Keras, TensorFlow and JAX again in every process it starts: a notebook's kernel, a
# test's child. Compiling them at install costs under a minute of one core, once; on a
# 2-core Intel machine, pytest printed "10 passed in 53.51s" for tests/test_startup.py with
# them and "in 98.20s" without (one run each, beside a training run).
INSTALLER ?= uv
# Three pytest-xdist workers on two cores: the chapters (nbval, then the site built from
# them) on one, the library's tests on the other two (tests/conftest.py groups them); the
# tests wait on disks and child processes often enough that a third worker fills the cores
# (on a 2-core Intel machine, one CI run each: pytest 976 s with three, 1,103 s with two).
# PYTEST_WORKERS=0 runs everything in one process.
PYTEST_WORKERS ?= 3

BUILD         := book/_build
# The execution cache is keyed by each notebook's code alone, so outputs cached under
# one profile would be shown by a build under another (a smoke run's numbers in a
# quick build). The build remembers the profile and Keras backend its cache was made
# with, and clears the cache when they change.
PROFILE_STAMP := $(BUILD)/.profile
# ipykernel's own matplotlib backend: an inherited MPLBACKEND=Agg would leave the
# pages without their figures (plt.show() draws nothing under Agg).
INLINE_BACKEND := module://matplotlib_inline.backend_inline

.PHONY: help venv book test clean distclean

help:
	@echo "make book       set up $(VENV) and build the site into book/_build/html"
	@echo "make test       set up $(VENV) and run the test suite (PYTEST_ARGS=... to pass options)"
	@echo "make venv       only set up $(VENV) (uv pip install -e \".[$(EXTRAS)]\"; INSTALLER=pip for pip)"
	@echo "make clean      remove the built site (keeps the execution cache)"
	@echo "make distclean  remove the built site, its execution cache and $(VENV)"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
ifeq ($(INSTALLER),uv)
	$(BIN)/python -m pip install -q "uv>=0.5,<1"
	$(BIN)/python -m uv pip install --python $(BIN)/python --compile-bytecode -e ".[$(EXTRAS)]"
else
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[$(EXTRAS)]"
endif
	@rm -f $(VENV)/.installed-*
	@touch $@

# Builds in the profile in force: TINYLIB_PROFILE, or tinylib's default for this
# machine (full with a GPU, quick without).
book: $(STAMP)
	@mkdir -p $(BUILD)
	@now=$$(TF_CPP_MIN_LOG_LEVEL=3 $(BIN)/python -c 'import tinylib, keras; from tinylib.profiles import get_profile; print(get_profile().name, keras.backend.backend())') || exit 1; \
	before=$$(cat $(PROFILE_STAMP) 2>/dev/null || true); \
	echo "Profile and backend: $$now"; \
	if [ -n "$$before" ] && [ "$$now" != "$$before" ]; then \
	  echo "The execution cache was made with '$$before': clearing it, every notebook runs again."; \
	fi; \
	if [ "$$now" != "$$before" ]; then \
	  rm -rf $(BUILD)/.jupyter_cache $(BUILD)/jupyter_execute $(BUILD)/.doctrees $(BUILD)/html; \
	  echo "$$now" > $(PROFILE_STAMP); \
	fi
	MPLBACKEND=$(INLINE_BACKEND) $(BIN)/jupyter-book build book/ $(JB_FLAGS)
	@echo "The site is in book/_build/html (open book/_build/html/index.html)."

test: $(STAMP)
	$(BIN)/python -m pytest --durations=30 -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

clean:
	rm -rf $(BUILD)/html $(BUILD)/.doctrees $(BUILD)/jupyter_execute $(BUILD)/screenshots

distclean:
	rm -rf book/_build $(VENV)
