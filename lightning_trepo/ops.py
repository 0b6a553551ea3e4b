"""Small masked tensor operations shared by the algorithms and modules."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def check_mask(mask: Tensor, **tensors: Tensor) -> None:
    """Raise ``ValueError`` unless ``mask`` is (N, L) and every named tensor has its shape."""
    if mask.dim() != 2:
        raise ValueError(f"mask must have shape (N, L), got {tuple(mask.shape)}")
    for name, t in tensors.items():
        if t.shape != mask.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but mask has shape {tuple(mask.shape)}")


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Σ_{mask = 1} x over ``dim`` (all elements when None); padded entries are selected out, not multiplied by
    0, so NaN or inf there changes neither the value nor the gradient."""
    x = torch.where(mask.bool(), x, torch.zeros_like(x))
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Σ x·mask / Σ mask over ``dim``; 0 where the mask is empty (never NaN)."""
    denom = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / denom.clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = False) -> Tensor:
    """Variance of the masked entries: population (divisor n) by default, sample (divisor n - 1) when ``unbiased``."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        var = var * n / (n - 1).clamp(min=1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8, unbiased: bool = True) -> Tensor:
    """(x - mean) / sqrt(var + eps) over the masked entries; masked-out entries become 0.

    ``var`` is the sample variance (divisor n - 1) by default, as verl's ``masked_whiten`` and TRL's ``whiten``
    (PPO advantages, REINFORCE++); ``unbiased=False`` divides by n.
    """
    mean = masked_mean(x, mask)
    out = (x - mean) * torch.rsqrt(masked_var(x, mask, unbiased=unbiased) + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask.bool(), out, torch.zeros_like(out))


def mask_positions(attention_mask: Tensor) -> Tensor:
    """Position ids that follow an (N, T) attention mask: a left-padded row's first real token is at 0, as in an
    unpadded row (padding gets 0 too)."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / T)[token] per position. logits (..., V), tokens (...) -> (...).

    Computed in float32 through log_softmax + gather, which keeps peak memory at one (..., V) copy.
    """
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    logp = F.log_softmax(logits, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """H(softmax(logits / T)) per position. (..., V) -> (...)."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def pack_by_mask(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Move each row's masked entries to the left, in order: y[i, k] = x[i, t_k] with t_k the k-th t where
    mask[i, t] = 1; returns (y (N, K), packed mask (N, K)), K the largest row count. Turns a mask with holes (a
    multi-turn episode's model tokens around the environment's) into a right-padded one."""
    check_mask(mask, x=x)
    keep = mask.bool()
    counts = keep.sum(-1)
    width = max(int(counts.max()) if counts.numel() else 0, 1)
    slot = torch.cumsum(keep.long(), dim=-1) - 1
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(slot)
    out = torch.zeros(mask.shape[0], width, dtype=x.dtype, device=x.device)
    out[rows[keep], slot[keep]] = x[keep]
    packed = (torch.arange(width, device=mask.device)[None, :] < counts[:, None]).to(mask.dtype)
    return out, packed


def unpack_by_mask(y: Tensor, mask: Tensor) -> Tensor:
    """Inverse of :func:`pack_by_mask`: x[i, t_k] = y[i, k] where mask[i, t_k] = 1, 0 elsewhere. (N, K) -> (N, L)."""
    keep = mask.bool()
    slot = torch.cumsum(keep.long(), dim=-1) - 1
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(slot)
    out = torch.zeros(mask.shape, dtype=y.dtype, device=y.device)
    out[keep] = y[rows[keep], slot[keep]]
    return out
