"""`python -m nucseg.export ckpt_path=... format=bioimageio|onnx|torchscript output=...` (conf/export.yaml);
the work is `nucseg.export.export_model`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

import nucseg.utils  # noqa: F401  (registers config resolvers)
from nucseg.export import check_request, export_model
from nucseg.utils.config import CONF_DIR
from nucseg.utils.errors import ConfigError, friendly_errors
from nucseg.utils.extras import check_overrides

__all__ = ["default_image", "main", "run_export"]


def default_image(data_dir: str | Path) -> Path | None:
    """The first DSB2018 stage1_train image under `data_dir`, if there is one."""
    root = Path(data_dir) / "dsb2018" / "stage1_train"
    if not root.is_dir():
        return None
    for d in sorted(root.iterdir()):
        png = d / "images" / f"{d.name}.png"
        if png.is_file():
            return png
    return None


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def run_export(cfg: DictConfig) -> Path:
    """Validate the request (format, output) before loading anything, then export."""
    check_request(str(cfg.format), cfg.output, bool(cfg.get("overwrite", False)))
    image = cfg.get("image")
    if cfg.format == "bioimageio" and image is None:
        image = default_image(cfg.paths.data_dir)
        if image is None:
            raise ConfigError("image: format=bioimageio needs a real image for its test tensors and cover; "
                              "pass image=path/to/image.png")
    return export_model(cfg.ckpt_path, str(cfg.format), cfg.output, overwrite=bool(cfg.get("overwrite", False)),
                        image=image, name=cfg.get("name"), description=cfg.get("description"),
                        authors=_plain(cfg.get("authors")), license=str(cfg.get("license") or "MIT"),
                        cite=_plain(cfg.get("cite")), tags=_plain(cfg.get("tags")),
                        training_data=cfg.get("training_data"), version=str(cfg.get("version") or "0.1.0"))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    with friendly_errors():
        out = run_export(cfg)
    print(f"exported {cfg.ckpt_path} as {cfg.format} -> {out}")


if __name__ == "__main__":
    check_overrides(sys.argv[1:])  # one line, not a Hydra traceback, when an override needs a missing extra
    main()
