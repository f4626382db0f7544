# One command each, on a machine with only Python 3 and make:
#   make book   set up .venv (first time, or when pyproject.toml changes) and build the site
#   make test   set up .venv the same way and run the whole test suite
# Re-running reuses .venv; the stamp file makes it reinstall when pyproject.toml changes.

PYTHON ?= python3
VENV   ?= .venv
EXTRAS ?= book,test,jax
BIN    := $(VENV)/bin
comma  := ,
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

# -W: warnings are errors; -n: nitpicky cross-references; --keep-going: report them all.
# With execute.allow_errors: false, a cell that raises makes this exit non-zero.
JB_FLAGS ?= -W -n --keep-going
PYTEST_ARGS ?=

.PHONY: help venv book test clean distclean

help:
	@echo "make book       set up $(VENV) and build the site into book/_build/html"
	@echo "make test       set up $(VENV) and run the test suite (PYTEST_ARGS=... to pass options)"
	@echo "make venv       only set up $(VENV) (pip install -e \".[$(EXTRAS)]\")"
	@echo "make clean      remove the built site (keeps the execution cache)"
	@echo "make distclean  remove the built site, its execution cache and $(VENV)"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[$(EXTRAS)]"
	@rm -f $(VENV)/.installed-*
	@touch $@

book: $(STAMP)
	$(BIN)/jupyter-book build book/ $(JB_FLAGS)
	@echo "The site is in book/_build/html (open book/_build/html/index.html)."

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf book/_build/html book/_build/doctrees

distclean:
	rm -rf book/_build $(VENV)
