"""Which code a checkpoint may name: the allow-list for the `_target_`s in its hyper-parameters.

`load_module` builds the network and the loss with `hydra.utils.instantiate` from configs read out of the
checkpoint file. A file from elsewhere could name any callable there (`os.system`, `builtins.eval`); Hydra's
own filter is a block-list on 1.3 (an allow-list only arrives with 1.4), so nucseg checks every `_target_`
itself, whatever the installed Hydra: only nucseg's model builder and loss classes, segmentation_models_pytorch
classes and torch.nn classes are accepted. The check resolves the name and tests the object it reaches, so an
alias (`torch.nn.parallel.distributed.os.system`) is refused like the name it stands for.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from torch import nn

__all__ = ["ALLOWED_CLASS_PACKAGES", "ALLOWED_FUNCTIONS", "disallowed_entries", "find_targets", "is_allowed_target"]

# builders called by name (exactly these strings)
ALLOWED_FUNCTIONS = frozenset({"nucseg.models.factory.build_model"})
# nn.Module subclasses defined in these packages
ALLOWED_CLASS_PACKAGES = ("nucseg.losses", "segmentation_models_pytorch", "torch.nn")


def _in_package(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _resolve(name: str) -> Any:
    """The object a dotted name reaches: the longest importable module prefix, then attributes.

    Raises ImportError / AttributeError when nothing is there. Only called on names inside the allowed
    packages, so only their modules are imported."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(name)


def is_allowed_target(target: Any) -> bool:
    """True when `target` (a `_target_` value) names an allowed builder or an allowed nn.Module class.

    The name must lie in an allowed package before anything is imported, and the object it resolves to must
    be an nn.Module subclass defined in an allowed package (which refuses aliases of other code)."""
    if not isinstance(target, str):
        return False
    if target in ALLOWED_FUNCTIONS:
        return True
    if not _in_package(target, ALLOWED_CLASS_PACKAGES):
        return False
    try:
        obj = _resolve(target)
    except (ImportError, AttributeError):
        return False
    return (isinstance(obj, type) and issubclass(obj, nn.Module)
            and _in_package(getattr(obj, "__module__", ""), ALLOWED_CLASS_PACKAGES))


def find_targets(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(key path, value) of every `_target_` in nested dicts / lists, e.g. ("net.aux_params", "torch.nn.X")."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            here = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                yield path, value
            else:
                yield from find_targets(value, here)
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from find_targets(value, f"{path}[{i}]")


def _interpolations(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(key path, string) of every string holding an OmegaConf interpolation (`${...}`)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _interpolations(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from _interpolations(value, f"{path}[{i}]")
    elif isinstance(node, str) and "${" in node:
        yield path, node


def disallowed_entries(hparams: Mapping[str, Any]) -> list[str]:
    """What in a checkpoint's hyper-parameters must not reach `hydra.utils.instantiate`, as messages naming
    the key path: `_target_`s outside the allow-list, and interpolations (Hydra would resolve `${oc.env:...}`
    and friends; nucseg stores its configs resolved, so a real checkpoint holds none)."""
    bad = [f"{path}._target_={target!r} is not an allowed target (nucseg's model builder and losses, "
           "segmentation_models_pytorch and torch.nn classes)"
           for path, target in find_targets(hparams) if not is_allowed_target(target)]
    bad += [f"{path}={text!r} is an interpolation" for path, text in _interpolations(hparams)]
    return bad
