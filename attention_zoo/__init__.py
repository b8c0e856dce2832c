"""attention_zoo: interchangeable attention modules behind one interface and a name registry.

    from attention_zoo import build_attention, list_attentions
    attn = build_attention("mra2", num_heads=2, head_dim=32, max_seq_len=4096, block_per_row=8)
    out = attn(q, k, v, mask)   # q, k, v: (batch, heads, seq, head_dim); mask: (batch, seq) bool

Every module in this package registers itself on import; importing the package imports them all.
"""

import importlib
import pkgutil

from .registry import (
    Attention,
    AttentionError,
    attention_class,
    build_attention,
    list_attentions,
    make_options,
    options_class,
    register_attention,
)

# Import every submodule so that its @register_attention decorators run. New attentions need only
# a new file here; nothing else to edit.
for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "Attention",
    "AttentionError",
    "attention_class",
    "build_attention",
    "list_attentions",
    "make_options",
    "options_class",
    "register_attention",
]
