"""Strategy-aware model lifecycle: build under ZeRO-3, shard with FSDP2, gather once per rollout.

Lightning's strategies do the distribution (DDP, DeepSpeed ZeRO-2/3, FSDP2 through
``ModelParallelStrategy``); this file holds the few things an RL module must add on top of them:

- ``build_policy`` / ``build_reference``: ZeRO-3 partitions every tensor created in
  ``configure_model``; Hugging Face ``from_pretrained`` then needs ``HfDeepSpeedConfig`` to load
  into partitioned weights, and modules that initialise their own weights (the built-in random
  model, LoRA adapters) are built whole and partitioned later by ``deepspeed.initialize``.
- ``fully_shard_model``: FSDP2 on every transformer block, then the root.
- ``params_sharded``: whether generation must run with ``synced_gpus`` (a rank that finishes early
  must keep joining the per-layer all-gathers of the others, or every rank hangs).
- ``gathered_for_generation``: gather the sharded policy once for a whole rollout instead of once
  per token and layer (ZeRO-3: ``GatheredParameters`` with the ZeRO hooks lifted; FSDP2:
  ``unshard()`` every FSDP module and keep it unsharded until the rollout ends).
- ``place_frozen``: the frozen reference (and any other frozen model) next to the policy, sharded the
  same way, or on the CPU between uses.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from lightning_trepo.policy import AdapterDisabled, PolicyConfig, apply_lora, is_lora, load_policy


# ---------------------------------------------------------------------------------------------- detection
def is_deepspeed_zero3(strategy: Any) -> bool:
    """Lightning's DeepSpeedStrategy (or a subclass) configured with ZeRO stage 3."""
    try:
        from lightning.pytorch.strategies import DeepSpeedStrategy
    except ImportError:  # pragma: no cover - lightning always ships it
        return False
    if not isinstance(strategy, DeepSpeedStrategy):
        return False
    zero = (strategy.config or {}).get("zero_optimization") or {}
    return zero.get("stage") == 3


def _is_fsdp1(strategy: Any) -> bool:
    try:
        from lightning.pytorch.strategies import FSDPStrategy
    except ImportError:  # pragma: no cover
        return False
    return isinstance(strategy, FSDPStrategy)


def _dtensor() -> type:
    try:
        from torch.distributed.tensor import DTensor  # torch >= 2.5
    except ImportError:  # pragma: no cover
        from torch.distributed._tensor import DTensor
    return DTensor


def has_sharded_params(model: nn.Module | None) -> bool:
    """Any parameter that is a ZeRO-3 partition (``ds_id``) or an FSDP2 DTensor shard."""
    if model is None:
        return False
    DTensor = _dtensor()
    return any(hasattr(p, "ds_id") or isinstance(p, DTensor) for p in model.parameters())


def params_sharded(strategy: Any, model: nn.Module | None) -> bool:
    """True when generating needs ``synced_gpus``: parameters are sharded across more than one rank
    (DeepSpeed ZeRO-3, FSDP2 through ModelParallelStrategy, FSDP1)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    if torch.distributed.get_world_size() < 2:
        return False
    return is_deepspeed_zero3(strategy) or _is_fsdp1(strategy) or has_sharded_params(model)


# ---------------------------------------------------------------------------------------------- building
@contextmanager
def _zero_init_paused() -> Iterator[None]:
    """Leave DeepSpeed's ``zero.Init`` (if active) so modules that initialise their own weights see
    whole tensors; ``deepspeed.initialize`` partitions them afterwards."""
    from deepspeed.runtime.zero import partition_parameters as pp

    active = pp.top_level_context is not None
    if active:
        pp.shutdown_init_context()
    try:
        yield
    finally:
        if active:
            pp.restore_init_context()


@contextmanager
def _hf_zero3_loading(strategy: Any) -> Iterator[None]:
    """Let ``from_pretrained`` load straight into ZeRO-3 partitions (rank 0 reads, the others receive)."""
    from transformers.integrations import HfDeepSpeedConfig

    keep_alive = HfDeepSpeedConfig(strategy.config)  # transformers holds only a weak reference
    try:
        yield
    finally:
        del keep_alive


def build_policy(strategy: Any, cfg: PolicyConfig):
    """``(policy, tokenizer)`` built for ``strategy``; call inside ``configure_model``."""
    if not is_deepspeed_zero3(strategy):
        return load_policy(cfg)
    if cfg.model_path is None:  # the built-in random model: its seeded init needs whole tensors
        with _zero_init_paused():
            return load_policy(cfg)
    with _hf_zero3_loading(strategy):
        model, tokenizer = load_policy(cfg, lora=False)
    if cfg.lora is not None:  # adapters initialise themselves (B = 0): build them whole
        with _zero_init_paused():
            model = apply_lora(model, cfg.lora)
    return model, tokenizer


def build_reference(strategy: Any, policy: nn.Module, cfg: PolicyConfig) -> nn.Module:
    """The frozen reference: the adapter-disabled policy under LoRA (no copy), a fresh ZeRO-3
    partitioned load when the policy is partitioned (a partitioned module cannot be deep-copied),
    else a deep copy of the freshly built policy."""
    if is_lora(policy):
        return AdapterDisabled(policy)
    if any(hasattr(p, "ds_id") for p in policy.parameters()):
        with _hf_zero3_loading(strategy):
            ref, _ = load_policy(cfg, lora=False)
    else:
        ref = copy.deepcopy(policy)
    ref.eval()
    ref.requires_grad_(False)
    return ref


# ---------------------------------------------------------------------------------------------- FSDP2
def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks to shard one by one: the model's ``_no_split_modules`` classes (Hugging
    Face), else the children of its longest ``nn.ModuleList``."""
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
        blocks = list(max(lists, key=len)) if lists else []
    return blocks


def _shard_mesh(mesh: Any) -> Any:
    """The mesh to shard over. ModelParallelStrategy's mesh is (data_parallel, tensor_parallel); this
    module does no tensor parallelism, so every rank is data-parallel: a dimension of size 1 is dropped
    (plain FSDP over the other) and two real dimensions give HSDP (replicate over data_parallel,
    shard over tensor_parallel, i.e. within a node with the default sizes)."""
    if mesh.ndim == 2:
        names = mesh.mesh_dim_names
        if mesh.size(0) == 1:
            return mesh[names[1]]
        if mesh.size(1) == 1:
            return mesh[names[0]]
    return mesh


def fully_shard_model(model: nn.Module, mesh: Any, offload: bool = False, frozen: bool = False) -> nn.Module:
    """Apply ``torch.distributed.fsdp.fully_shard`` to each transformer block, then the root (in place).
    A ``frozen`` model (no backward follows its forwards) reshards its root after forward too."""
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    mesh = _shard_mesh(mesh)
    policy = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if offload else OffloadPolicy()
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh, offload_policy=policy)
    fully_shard(model, mesh=mesh, offload_policy=policy, reshard_after_forward=True if frozen else None)
    return model


def shard_trainable_children(module: nn.Module, mesh: Any, skip: tuple[nn.Module, ...] = ()) -> list[str]:
    """FSDP2-shard every direct child (other than ``skip``) that holds trainable, unsharded parameters, e.g. a
    critic or value head: under ModelParallelStrategy nothing else would all-reduce their gradients."""
    done = []
    for name, child in module.named_children():
        if any(child is m for m in skip) or not unsharded_trainable(child):
            continue
        fully_shard_model(child, mesh)
        done.append(name)
    return done


def unsharded_trainable(module: nn.Module) -> list[str]:
    """Names of trainable parameters that are plain tensors (not FSDP2 DTensor shards)."""
    DTensor = _dtensor()
    return [n for n, p in module.named_parameters() if p.requires_grad and not isinstance(p, DTensor)]


def _fsdp_modules(model: nn.Module) -> list[nn.Module]:
    try:
        from torch.distributed.fsdp import FSDPModule  # torch >= 2.6
    except ImportError:  # pragma: no cover
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextmanager
def _fsdp2_unsharded(model: nn.Module) -> Iterator[bool]:
    mods = _fsdp_modules(model)
    if not mods or mods[0] is not model:
        yield False
        return
    model.set_reshard_after_forward(False)  # every FSDP module keeps its gathered weights...
    for m in mods:
        m.unshard()  # ...gathered here, once
    try:
        yield True
    finally:
        for m in mods:
            m.reshard()
        model.set_reshard_after_forward(True)  # FSDP2's defaults: blocks reshard after forward,
        model.set_reshard_after_forward(False, recurse=False)  # the root keeps its (needed-next) weights


# ---------------------------------------------------------------------------------------------- ZeRO-3
def _zero3_offload(engine: Any) -> Any:
    optimizer = getattr(engine, "optimizer", None)
    if optimizer is None:
        return None
    offload = getattr(optimizer, "parameter_offload", None)
    if offload is None and hasattr(optimizer, "forward_hooks"):  # inference engine: the offload object itself
        offload = optimizer
    return offload if hasattr(offload, "_register_deepspeed_module") else None


@contextmanager
def _zero3_gathered(engine: Any) -> Iterator[bool]:
    """Gather every ZeRO-3 partition once and lift the per-module fetch/release hooks (as in
    ``deepspeed.runtime.zero.stage3.unwrap_model_for_generation``), restoring both afterwards."""
    import deepspeed

    offload = _zero3_offload(engine)
    if offload is None:
        yield False
        return
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        for hook in offload.forward_hooks + offload.backward_hooks:
            hook.remove()
        offload.forward_hooks, offload.backward_hooks = [], []
        try:
            yield True
        finally:
            offload._register_deepspeed_module(offload.module)


@contextmanager
def gathered_for_generation(strategy: Any, policy: nn.Module, enabled: bool = True) -> Iterator[bool]:
    """Within the block the policy's full weights sit on every rank and a forward runs no collective,
    so generation needs no ``synced_gpus``. Yields whether it gathered (False: unsharded strategy,
    ``enabled=False``, or nothing to gather), in which case sharded generation stays per layer."""
    if not params_sharded(strategy, policy):
        yield False
    elif not enabled:
        yield False
        for m in _fsdp_modules(policy):  # FSDP2 keeps its root unsharded after forward: free it after the rollout
            m.reshard()
    elif is_deepspeed_zero3(strategy):
        with _zero3_gathered(strategy.model) as gathered:
            yield gathered
    elif _fsdp_modules(policy):
        with _fsdp2_unsharded(policy) as gathered:
            yield gathered
    else:
        yield False


# ---------------------------------------------------------------------------------------------- frozen models
class Offloaded(nn.Module):
    """A frozen model that lives on the CPU and visits ``device`` only while used."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.to("cpu")

    @contextmanager
    def on(self, device: torch.device) -> Iterator[nn.Module]:
        """Move to ``device`` for the block (e.g. one rollout's log-probs), back to the CPU after."""
        here = next(self.module.parameters()).device
        if here == torch.device(device):
            yield self
            return
        self.module.to(device)
        try:
            yield self
        finally:
            self.module.to("cpu")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        ids = kwargs.get("input_ids", args[0] if args else None)
        with self.on(ids.device) if isinstance(ids, torch.Tensor) else nullcontext():
            return self.module(*args, **kwargs)


def on_device(model: nn.Module, device: torch.device):
    """Context that puts an :class:`Offloaded` model on ``device`` (a no-op for any other model)."""
    return model.on(device) if isinstance(model, Offloaded) else nullcontext(model)


def place_frozen(strategy: Any, model: nn.Module, device: torch.device, offload: bool = False) -> nn.Module:
    """Put a frozen model where the policy's strategy wants it; returns what to call from now on.

    LoRA reference: nothing to place (it is the policy). FSDP2-sharded (see ``fully_shard_model``):
    already placed. ZeRO-3: wrapped in a DeepSpeed inference engine so its partitions are fetched per
    layer (``offload_param`` to the CPU with ``offload``). Otherwise the full model on ``device``, or
    on the CPU between uses with ``offload``.
    """
    if isinstance(model, (AdapterDisabled, Offloaded)):
        return model  # the policy itself, or placed already
    if is_deepspeed_zero3(strategy):
        from deepspeed import DeepSpeedEngine

        return model if isinstance(model, DeepSpeedEngine) else _zero3_inference_engine(strategy, model, offload)
    if has_sharded_params(model):  # FSDP2-sharded in configure_model
        return model
    return Offloaded(model) if offload else model.to(device)


def _zero3_inference_engine(strategy: Any, model: nn.Module, offload: bool) -> nn.Module:
    import deepspeed

    zero = {k: v for k, v in strategy.config["zero_optimization"].items() if k.startswith(("stage", "offload_param"))}
    if offload:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    config: dict[str, Any] = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": zero}
    for key in ("bf16", "fp16"):
        if key in strategy.config:
            config[key] = strategy.config[key]
    engine, *_ = deepspeed.initialize(model=model, config=config, dist_init_required=False)
    engine.eval()
    return engine


@contextmanager
def visiting(obj: Any, device: torch.device, enabled: bool) -> Iterator[None]:
    """``obj.to(device)`` for the block and back to the CPU after (e.g. an offloaded reward model); no-op if not
    enabled."""
    if not enabled:
        yield
        return
    obj.to(device)
    try:
        yield
    finally:
        obj.to("cpu")
