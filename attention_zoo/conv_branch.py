"""The "+Conv" branch: a depthwise conv over masked v added to an attention's output.

Nystromformer introduced it and the MRA paper's LRA comparison adds it to Nystrom, SOFT and YOSO
(kernel 33): `Conv2d(H, H, kernel=(k, 1), padding=(k // 2, 0), groups=H, bias=False)` over v shaped
(batch, H, seq, head_dim), i.e. one length-k filter per head along the sequence, shared across the
head_dim channels. v is masked first, so padding content never leaks into real outputs.

A "+Conv" variant is declared once per method with the two mixins below:

    @dataclass
    class NystromConvOptions(ConvOptions, LandmarkOptions):
        pass

    @register_attention("nystrom_conv", NystromConvOptions)
    class NystromConvAttention(WithConvBranch, NystromAttention):
        "Nystrom plus the conv branch."

The branch is added to whatever the base `_attend` returns, so for YOSO it comes after YOSO's
output normalisation, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .masking import masked_rows
from .registry import AttentionError, require_ints


class ConvBranch(nn.Module):
    """Depthwise sequence conv: v (batch, heads, seq, dim), mask (batch, seq) -> (batch, heads,
    seq, dim)."""

    def __init__(self, num_heads: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(num_heads, num_heads, kernel_size=(kernel, 1),
                              padding=(kernel // 2, 0), groups=num_heads, bias=False)

    def forward(self, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.conv(masked_rows(v, mask))


@dataclass
class ConvOptions:
    """Options mixin of a "+Conv" variant (list it before the base options class)."""

    conv_kernel: int = 33  # the MRA paper's LRA comparison

    def __post_init__(self) -> None:
        base = getattr(super(), "__post_init__", None)
        if base is not None:
            base()
        name = type(self).__name__
        require_ints(name, self, conv_kernel=1)
        if self.conv_kernel % 2 == 0:
            raise AttentionError(
                f"{name}: conv_kernel must be odd (output length = input length), "
                f"got {self.conv_kernel}"
            )


class WithConvBranch:
    """Attention mixin of a "+Conv" variant (list it before the base attention class)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv_branch = ConvBranch(self.num_heads, self.options.conv_kernel)

    def _attend(self, q, k, v, mask):
        return super()._attend(q, k, v, mask) + self.conv_branch(v, mask)
