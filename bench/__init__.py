"""Benchmarks of iqlut-gpu: a registry of cases and a runner (not a test suite).

Run from the repository root: ``python -m bench --quick`` (about a minute),
``python -m bench`` (everything), ``python -m bench --list``; or ``iqlut bench ...``
from a checkout. Results: ``bench/results/<machine>_<quick|full>.json`` and ``.png``.
See ``bench/runner.py`` for what is measured and ``bench/registry.py`` for the cases.
"""
