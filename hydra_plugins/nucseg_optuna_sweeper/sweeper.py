"""The Hydra Sweeper: reads `hydra.sweeper.*`, runs a `nucseg.sweep.worker.Worker` with Hydra's launcher and
writes the results (`nucseg.sweep.results`). User errors end in one line and exit status 2."""

from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


class NucsegOptunaSweeper(Sweeper):
    def __init__(self, storage: str | None = None, study_name: str = "nucseg", load_if_exists: bool = True,
                 direction: str = "maximize", n_trials: int = 20, n_jobs: int = 1, max_failures: int = 5,
                 heartbeat_interval: float = 60.0, grace_period: float = 600.0, sampler: Any = None,
                 pruner: Any = "median", params: DictConfig | None = None) -> None:
        self.storage, self.study_name, self.load_if_exists = storage, study_name, load_if_exists
        self.direction, self.n_trials, self.n_jobs, self.max_failures = direction, n_trials, n_jobs, max_failures
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.sampler, self.pruner, self.params = sampler, pruner, params
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                task_function=task_function)

    def sweep(self, arguments: list[str]) -> Any:
        from nucseg.utils.errors import friendly_errors

        with friendly_errors():
            return self._sweep(arguments)

    def _sweep(self, arguments: list[str]) -> Any:
        from nucseg.sweep.results import write_results
        from nucseg.sweep.storage import make_pruner, resolve_storage
        from nucseg.sweep.worker import SweepSettings, Worker

        assert self.config is not None and self.launcher is not None
        hydra_cfg = self.config.hydra
        storage = resolve_storage(self.storage, hydra_cfg.sweep.dir, cwd=hydra_cfg.runtime.cwd)
        settings = SweepSettings(storage=storage, study_name=str(self.study_name), direction=str(self.direction),
                                 n_trials=int(self.n_trials), n_jobs=int(self.n_jobs),
                                 load_if_exists=bool(self.load_if_exists), max_failures=int(self.max_failures),
                                 heartbeat_interval=float(self.heartbeat_interval),
                                 grace_period=float(self.grace_period), seed=_seed(hydra_cfg.sweeper.get("sampler")))
        worker = Worker(settings, lambda overrides, idx: self.launcher.launch(overrides, initial_job_idx=idx),
                        sampler=_sampler(self.sampler), pruner=make_pruner(self.pruner))
        params = [f"{k!s}={v}" for k, v in (self.params or {}).items()]
        study = worker.run([*params, *arguments])
        return write_results(study, hydra_cfg.sweep.dir, storage=storage, fixed=worker.fixed,
                             groups=list(hydra_cfg.runtime.choices.keys()), task=f"nucseg.{hydra_cfg.job.name}",
                             metric=self.config.get("optimized_metric"))


def _seed(spec: Any) -> int | None:
    seed = spec.get("seed") if OmegaConf.is_config(spec) or isinstance(spec, dict) else None
    return None if seed is None else int(seed)


def _sampler(spec: Any) -> Any:
    import optuna

    from nucseg.utils.errors import ConfigError

    if spec is None or isinstance(spec, optuna.samplers.BaseSampler):  # Hydra instantiates the sweeper's config
        return spec
    if not OmegaConf.is_config(spec) and not isinstance(spec, dict):
        raise ConfigError(f"hydra.sweeper.sampler: expected a {{_target_: optuna.samplers.<Name>, ...}} config, "
                          f"got {spec!r}")
    from nucseg.sweep.storage import build_optuna_object

    return build_optuna_object(spec, "hydra.sweeper.sampler", optuna.samplers.BaseSampler, "sampler")
