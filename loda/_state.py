"""Strict, named comparison of a state dict against the tensors a module expects."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from .errors import LodaError, StateDictMismatch, first_line


def check_state_dict(
    expected: Mapping[str, torch.Tensor],
    provided: Mapping[str, torch.Tensor],
    *,
    what: str,
    allowed_unexpected: Iterable[str] = (),
) -> None:
    """Raise :class:`StateDictMismatch` naming every missing, unexpected or mis-shaped tensor.

    ``allowed_unexpected`` lists keys the file may carry that the module does not use (a
    backbone's classifier head, say); they are ignored by the caller.
    """
    allowed = set(allowed_unexpected)
    missing = sorted(k for k in expected if k not in provided)
    unexpected = sorted(k for k in provided if k not in expected and k not in allowed)
    not_tensors = sorted(k for k, v in provided.items() if not isinstance(v, torch.Tensor))
    misshaped = sorted(
        f"{k} {tuple(provided[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in provided
        and isinstance(provided[k], torch.Tensor)
        and tuple(provided[k].shape) != tuple(v.shape)
    )
    problems = []
    for label, names in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("not tensors", not_tensors),
        ("mis-shaped", misshaped),
    ):
        if names:
            problems.append(f"{len(names)} {label}: {_shorten(names)}")
    if problems:
        raise StateDictMismatch(f"{what}: " + "; ".join(problems))


def _shorten(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... (+{len(names) - limit} more)"


def load_checked(
    module: torch.nn.Module,
    provided: Mapping[str, torch.Tensor],
    *,
    what: str,
    allowed_unexpected: Iterable[str] = (),
) -> None:
    """Check ``provided`` against ``module.state_dict()`` and copy it in (values cast to the
    module's dtypes; shapes must match exactly)."""
    expected = module.state_dict()
    check_state_dict(expected, provided, what=what, allowed_unexpected=allowed_unexpected)
    module.load_state_dict({k: provided[k] for k in expected}, strict=True)


def torch_load_weights_only(path, error: type[LodaError], what: str):
    """``torch.load(weights_only=True)`` on CPU; any unpickling failure becomes one line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors come in many types; one line for the user
        detail = f"{type(exc).__name__}: {first_line(exc)}"  # a bare "101" needs its type
        raise error(f"cannot read {path} as a weights-only torch {what}: {detail}") from None
