"""A real pipen pipeline on every scheduler; see conftest.py.  (A package, so
its conftest does not shadow tests/conftest.py as module ``conftest``.)"""
