"""The packaging details pyproject.toml cannot say: the checkout's top-level `conf/` ships inside the wheel
as the package data `nucseg/conf` (found by `nucseg.utils.config.CONF_DIR`), so an installed nucseg composes
its configs without a source tree; and nucseg's Hydra sweeper ships as `hydra_plugins.nucseg_optuna_sweeper` in
Hydra's plugin namespace package (no `hydra_plugins/__init__.py`: other plugins share it)."""

from setuptools import find_namespace_packages, find_packages, setup

# every config folder is a data-only package under nucseg.conf (setuptools warns about folders it is not told of)
CONF = ["nucseg.conf", *(f"nucseg.conf.{name}" for name in find_namespace_packages(where="conf"))]

setup(
    packages=[*find_packages(include=["nucseg", "nucseg.*"]), *CONF,
              *find_namespace_packages(include=["hydra_plugins.*"])],
    package_dir={"nucseg.conf": "conf"},
    package_data={"nucseg": ["py.typed"], **{name: ["*.yaml"] for name in CONF}},
)
