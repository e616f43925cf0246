"""Storage URLs and pruners from the sweeper's config values: journal files by default, any SQLAlchemy URL, one
clear error naming the key otherwise."""

from __future__ import annotations

import optuna
import pytest

from nucseg.sweep.storage import DEFAULT_JOURNAL, make_pruner, open_storage, resolve_storage
from nucseg.utils.errors import ConfigError


def test_default_storage_is_a_journal_file_in_the_sweep_dir(tmp_path):
    assert resolve_storage(None, "multiruns/x", cwd=tmp_path) == f"journal://{tmp_path}/multiruns/x/{DEFAULT_JOURNAL}"


def test_relative_paths_become_absolute_so_jobs_in_other_directories_open_the_same_study(tmp_path):
    assert resolve_storage("journal://s/study.log", "sweep", cwd=tmp_path) == f"journal://{tmp_path}/s/study.log"
    assert resolve_storage("journal:///abs/study.log", "sweep", cwd=tmp_path) == "journal:///abs/study.log"
    assert resolve_storage("sqlite:///s/study.db", "sweep", cwd=tmp_path) == f"sqlite:///{tmp_path}/s/study.db"
    url = "postgresql://nucseg:secret@db.cluster:5432/optuna"
    assert resolve_storage(url, "sweep", cwd=tmp_path) == url


@pytest.mark.parametrize("url", ["study.log", "redis://localhost", "journal://", "sqlite://", "sqlite:///:memory:",
                                 "postgresql://host:notaport/db"])
def test_a_bad_storage_url_is_one_error_naming_the_key(tmp_path, url):
    with pytest.raises(ConfigError) as info:
        resolve_storage(url, "sweep", cwd=tmp_path)
    message = str(info.value)
    assert message.startswith("hydra.sweeper.storage:") and "journal:///" in message and "\n" not in message


def test_two_journal_storages_on_one_file_see_one_study(tmp_path):
    url = resolve_storage(None, "sweep", cwd=tmp_path)
    first = optuna.create_study(study_name="s", storage=open_storage(url), direction="maximize")
    first.tell(first.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 0.5)
    second = optuna.load_study(study_name="s", storage=open_storage(url))
    assert [t.state.name for t in second.trials] == ["COMPLETE"] and second.best_value == 0.5


def test_sqlite_storage_works_with_optuna_4(tmp_path):
    url = resolve_storage("sqlite:///study.db", "sweep", cwd=tmp_path)
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    study.tell(study.ask(), 1.0)
    assert optuna.load_study(study_name="s", storage=url).best_value == 1.0


def test_pruners_by_name_or_target_and_an_unknown_name_is_one_error():
    assert isinstance(make_pruner("median"), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner("none"), optuna.pruners.NopPruner)
    assert isinstance(make_pruner(None), optuna.pruners.NopPruner)
    pruner = make_pruner({"_target_": "optuna.pruners.ThresholdPruner", "lower": 0.5})
    assert isinstance(pruner, optuna.pruners.ThresholdPruner)
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.pruner: 'medain' is not a pruner; expected one of median"):
        make_pruner("medain")
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.pruner: .*needs `_target_`"):
        make_pruner({"lower": 0.5})
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.pruner: collections.OrderedDict is not an optuna pruner"):
        make_pruner({"_target_": "collections.OrderedDict"})
