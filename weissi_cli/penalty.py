"""The WEISSI penalty and the L2 slack as differentiable torch functions, for training loops.

    loss = criterion(model(x), y) + alpha * weissi_penalty(model)

Both agree with what `weissi inspect` and `weissi trend` report for the same weights saved
to a checkpoint. This module imports torch when it loads, and nothing in the CLI imports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from weissi_cli.errors import StructureError, UsageError
from weissi_cli.io.torch_pickle import TensorDictCheckpoint

__all__ = ["ZeroWeightError", "l2_slack", "weissi_penalty", "weissi_terms"]

Named = list[tuple[str, Tensor]]


class ZeroWeightError(UsageError, ValueError):
    """A penalised weight is all zeros: ln‖W‖ is −∞ and W/‖W‖ undefined."""


def weissi_penalty(
    module: nn.Module | None,
    lambda1: float = 1.0,
    lambda2: float = 1.0,
    params: Iterable[Tensor] | None = None,
) -> Tensor:
    """λ1·Σ ln‖W‖ + λ2·Σ ‖W/‖W‖‖₁ as a differentiable scalar (‖·‖ Frobenius, natural log).

    By default over every floating-point parameter of `module` with two or more dimensions
    (linear and conv kernels, embeddings: the weight-decay convention weissi reports by; a
    tied parameter counts once); with `params`, over exactly those tensors. It is unchanged
    by any layer-wise scale shift W_l → γ_l·W_l with Π γ_l = 1.

    Sums accumulate in float32 (float64 when a tensor is float64): 16-bit parameters are
    upcast first, so a bfloat16 model gets a float32 penalty (and autograd keeps a float32
    copy of each weight until backward). A weight that is all zeros raises ZeroWeightError
    (its logarithm is −∞) rather than returning NaN; checking it reads one boolean back
    from the device on each call.
    """
    log_sum, l1_sum = weissi_terms(module, params)
    return lambda1 * log_sum + lambda2 * l1_sum


def weissi_terms(
    module: nn.Module | None, params: Iterable[Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """(Σ ln‖W‖, Σ ‖W/‖W‖‖₁) over the tensors `weissi_penalty` would penalise, to log or
    weight separately."""
    named = _selected(module, params)
    squares, widened = _squares(named)
    l1 = torch.stack([torch.sum(torch.abs(t)) for t in widened])
    norms = torch.sqrt(squares)
    return torch.log(norms).sum(), (l1 / norms).sum()


def l2_slack(module_or_params: nn.Module | Iterable[Tensor]) -> Tensor:
    """Σ_l ‖W_l‖² − L·G² summed over chains (G the geometric mean of the chain's norms): the
    part of the L2 penalty that a function-preserving layer-wise scale shift removes, ≥ 0 and
    differentiable.

    For a module, the chains are the ones `weissi inspect` finds in its state dict saved as a
    torch pickle (names and shapes, ReLU assumed between consecutive layers whose shapes
    connect; tensors in no chain have no slack); for plain tensors, all of them form one
    chain. A module without any chain raises StructureError, and a zero weight in a chain
    ZeroWeightError.
    """
    chains = (
        _module_chains(module_or_params)
        if isinstance(module_or_params, nn.Module)
        else [_plain(module_or_params)]
    )
    total: Tensor | None = None
    for chain in chains:
        squares, _ = _squares(chain)
        # L·G² with ln G² the mean of ln n_l²: no product of norms to overflow.
        minimum = len(chain) * torch.exp(torch.log(squares).mean())
        slack = torch.clamp(squares.sum() - minimum, min=0.0)
        total = slack if total is None else total + slack
    assert total is not None  # _module_chains and _plain never return an empty list
    return total


# --- which tensors ----------------------------------------------------------------------


def _selected(module: nn.Module | None, params: Iterable[Tensor] | None) -> Named:
    if params is not None:
        return _plain(params)
    if module is None:
        raise UsageError("weissi_penalty needs a module or params=[...]")
    named: Named = [
        (name, parameter)
        for name, parameter in module.named_parameters()
        if parameter.dim() >= 2 and parameter.is_floating_point()
    ]
    if not named:
        raise UsageError(
            f"{type(module).__name__} has no floating-point parameter with two or more "
            "dimensions to penalise; pass params=[...]"
        )
    return named


def _plain(params: Iterable[Tensor]) -> Named:
    if isinstance(params, Tensor):
        raise UsageError("pass a list of tensors (params=[weight]), not a single tensor")
    named = [(f"params[{index}]", tensor) for index, tensor in enumerate(params)]
    if not named:
        raise UsageError("no tensors given to penalise")
    for name, tensor in named:
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            raise UsageError(f"{name} is not a floating-point tensor")
    return named


def _module_chains(module: nn.Module) -> list[Named]:
    from weissi_cli.structure.heuristic import infer_structure

    state = module.state_dict(keep_vars=True)
    structure = infer_structure(_StateDictView(state)).folded()
    if not structure.chains:
        raise StructureError(
            f"{type(module).__name__}: no chain of layers found in its parameter names and "
            "shapes (see `weissi graph` on its saved state dict); pass the weights of one "
            "chain as a list to treat them as one"
        )
    return [
        [(layer.weight, state[layer.weight]) for layer in chain.layers]
        for chain in structure.chains
    ]


def _squares(named: Named) -> tuple[Tensor, list[Tensor]]:
    """Per tensor Σ w², summed in float32 (float64 when any tensor is float64), and the
    tensors in that dtype for further sums.

    A 16-bit tensor is upcast first (a float32 copy that autograd keeps until backward):
    `vector_norm(..., dtype=torch.float32)` of a bfloat16 tensor was off by 1e-5 at 262K
    values and 1e-3 at 4M here, `torch.sum` of the upcast values by 1e-8.
    """
    dtype = torch.float64 if any(t.dtype == torch.float64 for _, t in named) else torch.float32
    widened = [t if t.dtype == dtype else t.to(dtype) for _, t in named]
    squares = torch.stack([torch.sum(t * t) for t in widened])
    _refuse_zeros(named, squares)
    return squares, widened


def _refuse_zeros(named: Sequence[tuple[str, Tensor]], squares: Tensor) -> None:
    zero = squares.detach() == 0
    if bool(zero.any()):
        name = named[int(zero.nonzero()[0, 0])][0]
        raise ZeroWeightError(
            f"{name} is all zeros: ln‖W‖ is −∞ and W/‖W‖ undefined; initialise it with "
            "non-zero values or leave it out with params=[...]"
        )


class _StateDictView(TensorDictCheckpoint):
    """A module's state dict as the checkpoint its torch pickle would be, for the structure
    heuristic (shapes, dtypes, names, shared storage; no data is read)."""

    def __init__(self, state: Mapping[str, Tensor]) -> None:
        super().__init__()
        self.path = Path("<module>")
        self.format = "torch"
        self.metadata = {}
        self.file_bytes = 0
        self._set_tensors(dict(state))
