# Not a library: this file makes pytest import book/conftest.py as `book.conftest`,
# so that it does not shadow tests/conftest.py (which the tests import as `conftest`).
