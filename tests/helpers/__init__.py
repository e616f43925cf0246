"""Importable test helpers (fixtures live in tests/conftest.py):

- `tests.helpers.paths`: the repository root, the conf/ directory and the real data roots;
- `tests.helpers.config`: Hydra composition of a root config and the small-run overrides;
- `tests.helpers.checkpoints`: crafted checkpoints (a 1x1 convolution) and a short real run's checkpoint;
- `tests.helpers.train_cli`: `python -m nucseg.train` in a subprocess, as a user runs it;
- `tests.helpers.scripts`: a script of experiments/ loaded as a module.
"""
