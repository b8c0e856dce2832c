"""The attention interface and the name registry.

Every attention in the zoo is an `Attention` subclass registered with a dataclass of its options,
which checks its values in `__post_init__` (so a bad value fails wherever the options are built):

    @dataclass
    class MyOptions:
        window: int = 64

        def __post_init__(self):
            require_ints("my_attention", self, window=1)

    @register_attention("my_attention", MyOptions)
    class MyAttention(Attention):
        def _attend(self, q, k, v, mask): ...

`build_attention("my_attention", num_heads=2, head_dim=32, max_seq_len=1024, window=128)` builds it.
An unknown name or option fails with the list of valid names or keys.

The forward contract, shared by every module:
    q, k, v: (batch, heads, seq, head_dim) floats
    mask:    (batch, seq) bool, True = real token
    out:     (batch, heads, seq, head_dim), same dtype as q; padded query rows are exactly zero.
`Attention.forward` zeroes the padded rows of q, k and v before `_attend`, so a method may assume
they hold zeros (it still masks padded keys where zero is not "absent", e.g. exp(0) = 1).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
from typing import Any, ClassVar

import torch
from torch import nn

from kernels.backend import BACKENDS

from .masking import masked_rows


def in_full_precision(attend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
    """attend(q, k, v, mask) on q, k, v in at least fp32 (fp64 stays fp64) with autocast off.
    The output keeps the computed dtype; the caller casts back."""
    dtype = torch.promote_types(q.dtype, torch.float32)
    with torch.autocast(device_type=q.device.type, enabled=False):
        return attend(q.to(dtype), k.to(dtype), v.to(dtype), mask)


class AttentionError(ValueError):
    """A wrong attention name, option or input. The message says what to change."""


@dataclasses.dataclass
class NoOptions:
    """Options dataclass for attentions that take none."""


class Attention(nn.Module):
    """Base class: shape checks, padded-query zeroing and capability flags.

    Capability flags are read by the encoder before use, so a wrong combination fails early:
      needs_shared_qk       q and k must come from one projection (Reformer, SOFT).
      approximates_softmax  the method estimates softmax(qk^T/sqrt(d)) v (error is measured);
                            False for methods that define their own kernel (SOFT, YOSO).
      max_supported_len     the longest input the module takes (None = any length).
      full_precision        run `_attend` in at least fp32 with autocast off: exp of logits or
                            random features overflows in fp16 and loses its tail in bf16, and
                            pseudo-inverses and hash signs need the precision (fp64 stays fp64).
                            True for every approximation; only exact softmax, whose fused and
                            written-out kernels are stable in half precision, turns it off.
      kernel_family         the `kernels` family whose backends the option `backend` picks
                            (None for pure-PyTorch methods); the module records the backend it
                            ran as `backend_in_use`.
    Every module takes any length: methods that need a block, chunk or window multiple pad
    internally and mask the padding.
    """

    needs_shared_qk: ClassVar[bool] = False
    approximates_softmax: ClassVar[bool] = True
    max_supported_len: ClassVar[int | None] = None
    full_precision: ClassVar[bool] = True
    kernel_family: ClassVar[str | None] = None

    name: str = "attention"

    def __init__(self, *, num_heads: int, head_dim: int, max_seq_len: int, options: Any):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.max_seq_len = max_seq_len
        self.options = options

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        self.check_inputs(q, k, v, mask)
        # Padded rows are zeroed by a select before any method sees them, so no value there
        # (inf and NaN included) can reach a product, a real output or a gradient. A batch with
        # no padding needs no select; asking costs a host sync on a GPU, so only the CPU asks.
        padded = mask.device.type != "cpu" or not bool(mask.all())
        if padded:
            q, k, v = (masked_rows(x, mask) for x in (q, k, v))
        if q.shape[0] == 0:
            # An empty batch has nothing to attend; its (empty) output keeps the autograd graph.
            return q
        if self.full_precision:
            out = in_full_precision(self._attend, q, k, v, mask)
        else:
            out = self._attend(q, k, v, mask)
        # Padded query rows are defined as zero for every method, whatever it computed there.
        return (masked_rows(out, mask) if padded else out).to(q.dtype)

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def share_parameters(self, first: Attention) -> None:
        """Called by the encoder on every layer after the first, with the first layer's module:
        a method whose published setting shares parameters across layers (Linformer's E) ties
        them here. Nothing is shared by default."""

    def check_inputs(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
    ) -> None:
        if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
            raise AttentionError(
                f"{self.name}: q, k, v must share the shape (batch, heads, seq, head_dim); "
                f"got q{tuple(q.shape)}, k{tuple(k.shape)}, v{tuple(v.shape)}"
            )
        batch, heads, seq, head_dim = q.shape
        if heads != self.num_heads or head_dim != self.head_dim:
            raise AttentionError(
                f"{self.name}: built for {self.num_heads} heads x {self.head_dim} dims, "
                f"got {heads} heads x {head_dim} dims"
            )
        if mask.shape != (batch, seq) or mask.dtype != torch.bool:
            raise AttentionError(
                f"{self.name}: mask must be a (batch, seq) = ({batch}, {seq}) bool tensor with "
                f"True for real tokens; got {mask.dtype} {tuple(mask.shape)}"
            )
        if self.max_supported_len is not None and seq > self.max_supported_len:
            raise AttentionError(
                f"{self.name}: takes at most {self.max_supported_len} tokens, got {seq}"
            )
        if seq > self.max_seq_len:
            raise AttentionError(
                f"{self.name}: input length {seq} exceeds max_seq_len={self.max_seq_len} it was "
                "built for; raise task.max_len (or the attention's max_seq_len)"
            )

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(self.options).items())
        return f"heads={self.num_heads}, head_dim={self.head_dim}, {opts}".rstrip(", ")


class Choice(str, enum.Enum):
    """An option with fixed choices: a str enumeration whose members are named as their values,
    so a YAML or command-line string is the member (OmegaConf looks members up by name) and a
    member prints, compares and serialises as its plain string.

        class Init(Choice):
            gaussian = enum.auto()
            pooling = enum.auto()
    """

    @staticmethod
    def _generate_next_value_(name: str, start: int, count: int, last_values: list) -> str:
        return name

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


Backend = Choice("Backend", BACKENDS)  # a kernel family's backend (kernels.backend)


def require_ints(name: str, options, *, nullable: tuple[str, ...] = (), **lowest: int) -> None:
    """For an options dataclass's `__post_init__`: raise AttentionError unless each named option
    is an int >= its lowest allowed value (or None, for the options listed in `nullable`)."""
    for key, low in lowest.items():
        value = getattr(options, key)
        if value is None and key in nullable:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            allowed = " or null" if key in nullable else ""
            raise AttentionError(f"{name}: {key} must be an int >= {low}{allowed}, got {value!r}")


def require_probability(name: str, options, *keys: str) -> None:
    """For an options dataclass's `__post_init__`: raise AttentionError unless each named option
    is a number in [0, 1) (a dropout rate)."""
    for key in keys:
        value = getattr(options, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise AttentionError(f"{name}: {key} must be a number in [0, 1), got {value!r}")


def require_choice(name: str, options, **choices: type[Choice]) -> None:
    """For an options dataclass's `__post_init__`: raise AttentionError unless each named option
    is one of its Choice's values; a plain string becomes the member."""
    for key, allowed in choices.items():
        value = getattr(options, key)
        if value not in allowed.__members__.values():
            raise AttentionError(f"{name}: {key} must be one of {', '.join(allowed)}, "
                                 f"got {value!r}")
        setattr(options, key, allowed(value))


_REGISTRY: dict[str, tuple[type[Attention], type]] = {}


def register_attention(name: str, options_cls: type = NoOptions):
    """Class decorator: register `cls` under `name`, with `options_cls` (a dataclass) as options."""
    if not dataclasses.is_dataclass(options_cls):
        raise TypeError(f"options for {name!r} must be a dataclass, got {options_cls!r}")

    def wrap(cls: type[Attention]) -> type[Attention]:
        if name in _REGISTRY:
            raise ValueError(f"attention {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = (cls, options_cls)
        return cls

    return wrap


def list_attentions() -> list[str]:
    """Names of every registered attention, sorted."""
    return sorted(_REGISTRY)


def attention_class(name: str) -> type[Attention]:
    return _lookup(name)[0]


def options_class(name: str) -> type:
    return _lookup(name)[1]


def _lookup(name: str) -> tuple[type[Attention], type]:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise AttentionError(
            f"unknown attention {name!r}.{hint} Valid names: {', '.join(list_attentions())}"
        )
    return _REGISTRY[name]


def make_options(name: str, **options: Any):
    """Build the options dataclass of `name`; unknown keys fail with the valid ones listed, bad
    values with the option named (the dataclass's `__post_init__`)."""
    options_cls = options_class(name)
    fields = {f.name for f in dataclasses.fields(options_cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        valid = ", ".join(sorted(fields)) or "(none)"
        close = difflib.get_close_matches(unknown[0], fields, n=2)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise AttentionError(
            f"attention {name!r} has no option(s) {', '.join(unknown)}.{hint} "
            f"Valid options: {valid}"
        )
    return options_cls(**options)  # its __post_init__ checks the values


def build_attention(
    name: str, *, num_heads: int, head_dim: int, max_seq_len: int, **options: Any
) -> Attention:
    """Build the attention registered as `name` with the given options."""
    cls, _ = _lookup(name)
    for key, value in (("num_heads", num_heads), ("head_dim", head_dim),
                       ("max_seq_len", max_seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AttentionError(f"attention {name!r}: {key} must be a positive int, got {value!r}")
    opts = make_options(name, **options)
    return cls(num_heads=num_heads, head_dim=head_dim, max_seq_len=max_seq_len, options=opts)
