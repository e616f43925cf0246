"""`nucseg <command> [overrides]`: one console command for the entry points, Hydra overrides passed through.

    nucseg train experiment=cpu              # = python -m nucseg.train experiment=cpu
    nucseg predict ckpt_path=model.ckpt input=images/
    nucseg --version
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from nucseg import __version__
from nucseg.utils.extras import check_overrides

__all__ = ["COMMANDS", "main", "usage"]

# command -> (module whose `main` runs it, what it does)
COMMANDS = {
    "train": ("nucseg.train", "train a model, tune and calibrate it on validation, test it (conf/train.yaml)"),
    "predict": ("nucseg.predict", "masks, counts and review flags for your images (conf/predict.yaml)"),
    "evaluate": ("nucseg.evaluate", "score a checkpoint on a labelled split or folder (conf/evaluate.yaml)"),
    "tune": ("nucseg.tune", "choose a checkpoint's post-processing on validation (conf/tune.yaml)"),
    "export": ("nucseg.export.__main__", "bioimage.io, ONNX or TorchScript model (conf/export.yaml)"),
}


def version() -> str:
    return __version__


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"nucseg {version()}: segment, count and check nuclei in microscopy images", "",
             "usage: nucseg <command> [key=value ...]   (Hydra overrides; `nucseg <command> --help` lists them)",
             "       nucseg --version", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `argv` (default: the command line); returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        print(f"nucseg {version()}")
        return 0
    command, overrides = args[0], args[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; expected one of {', '.join(COMMANDS)} (nucseg --help)",
              file=sys.stderr)
        return 2
    check_overrides(overrides)
    entry = importlib.import_module(COMMANDS[command][0])
    from nucseg.utils.cluster import rank_overrides

    # Hydra reads its overrides from sys.argv; ranks > 0 that torchrun / srun started write no .hydra/
    sys.argv = [f"nucseg {command}", *overrides, *rank_overrides(overrides)]
    entry.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
