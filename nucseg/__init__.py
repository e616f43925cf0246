"""nucseg: nucleus segmentation with uncertainty.

Library use: `nucseg.Predictor.from_checkpoint(path).predict(image)` -> `nucseg.Prediction`;
`nucseg.export_model(path, "bioimageio" | "onnx" | "torchscript", output)` shares a model. They are imported
on first use, so that `import nucseg.data.io` and the like do not load torch and the models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nucseg.utils.version import package_version

__version__ = package_version()

if TYPE_CHECKING:
    from nucseg.export import export_model
    from nucseg.inference.prediction import Prediction
    from nucseg.inference.predictor import Predictor

__all__ = ["Prediction", "Predictor", "__version__", "export_model"]


def __getattr__(name: str) -> Any:
    # lazy: `import nucseg.data.io` and the command-line tool must not load torch and the models
    if name == "export_model":
        from nucseg.export import export_model

        return export_model
    if name in ("Prediction", "Predictor"):
        from nucseg.inference import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'nucseg' has no attribute {name!r}")


def __dir__() -> list[str]:  # tab completion in a notebook lists the lazy names too
    return sorted({*globals(), *__all__})
