"""Approximation: how far each attention's output is from exact attention, per head.

    relative_error = mean over (instance, head) of ||Y_hat - Y||_F / ||Y||_F

over the real query rows of one head's (seq, head_dim) output, averaged over instances (on real
inputs: text segments x encoder layers) and heads, as the MRA paper does. Y is exact softmax
attention (softmax_naive) on the same q, k, v; for a method that needs q = k (Reformer, SOFT),
both are given k = q. For methods that define their own kernel (YOSO, SOFT:
approximates_softmax False) the figure is their distance from softmax, not an error.

Entropy: the mean over real query rows of -sum_j p_ij log p_ij of the exact attention. The sweep
multiplies q by `scale`, i.e. scales the logits, to move it: small scales flatten attention
(uniform attention has entropy log n), large ones sharpen it.
"""

from __future__ import annotations

import torch

from attention_zoo import attention_class, build_attention
from attention_zoo.masking import key_mask, masked_rows, masked_softmax
from attention_zoo.structured import structured_qkv

from .measure import failure_status, measure
from .profiles import describe

CHUNK = 4  # instances per forward call: bounds the n x n memory of the exact attention


def per_head_error(out: torch.Tensor, exact: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(batch, heads): ||out - exact|| / ||exact|| of each head over its real rows."""
    diff = masked_rows(out - exact, mask).flatten(2).norm(dim=-1)
    return diff / masked_rows(exact, mask).flatten(2).norm(dim=-1).clamp_min(1e-30)


def entropy(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean entropy (nats) of the exact attention rows softmax(q k^T / sqrt(d)) over real query
    rows, heads and instances. q, k: (batch, heads, seq, head_dim); mask: (batch, seq)."""
    total, rows = 0.0, 0
    for start in range(0, q.shape[0], CHUNK):
        part = slice(start, start + CHUNK)
        logits = q[part] @ k[part].transpose(-1, -2) * q.shape[-1] ** -0.5
        allowed = key_mask(mask[part])
        p = masked_softmax(logits, allowed)
        logp = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
        row_entropy = -(torch.where(allowed, p * logp, 0)).sum(-1)  # (batch, heads, seq)
        real = mask[part][:, None, :].expand_as(row_entropy)
        total += float(row_entropy[real].sum())
        rows += int(real.sum())
    return total / rows


@torch.no_grad()
def chunked(attend, q, k, v, mask) -> torch.Tensor:
    """attend over instance chunks, concatenated: the same output with bounded memory."""
    return torch.cat([attend(q[i:i + CHUNK], k[i:i + CHUNK], v[i:i + CHUNK], mask[i:i + CHUNK])
                      for i in range(0, q.shape[0], CHUNK)])


def exact_output(q, k, v, mask) -> torch.Tensor:
    exact = build_attention("softmax_naive", num_heads=q.shape[1], head_dim=q.shape[-1],
                            max_seq_len=q.shape[2])
    return chunked(exact, q, k, v, mask)


def error_of(attend, q, k, v, mask, exact: torch.Tensor) -> float:
    """Mean per-head relative error of `attend` against `exact` (the output on these inputs)."""
    return float(per_head_error(chunked(attend, q, k, v, mask), exact, mask).mean())


def build(name: str, options: dict, heads: int, seq: int, head_dim: int):
    """`name` with `options` for (heads, seq, head_dim) inputs, max_seq_len = seq, seeded
    draws (a method's random features or hashes are the same in every run)."""
    torch.manual_seed(0)
    return build_attention(name, num_heads=heads, head_dim=head_dim, max_seq_len=seq,
                           **options).eval()


def shared_qk(name: str) -> bool:
    return attention_class(name).needs_shared_qk


class InputSet:
    """One kind of approximation input (q, k, v: (instances, heads, seq, head_dim) on the
    device), its exact outputs and entropies per logit scale, and the rows measured on it.

    Time and memory of a setting are measured once, on one instance of structured inputs of the
    same shape (they do not depend on the values), and shared by every input kind."""

    def __init__(self, kind: str, q, k, v, repeats: int, costs: dict):
        self.kind, self.q, self.k, self.v = kind, q, k, v
        self.mask = torch.ones(q.shape[0], q.shape[2], dtype=torch.bool, device=q.device)
        self.shape = (q.shape[1], q.shape[2], q.shape[3])  # (heads, seq, head_dim)
        self.repeats, self.costs = repeats, costs
        self._exact: dict[tuple[float, bool], tuple[torch.Tensor, float]] = {}

    def inputs(self, scale: float, shared: bool):
        """q, k, v at a logit scale (q scaled; k = q for a shared-qk method)."""
        q = self.q * scale
        return q, (q if shared else self.k), self.v

    def reference(self, scale: float, shared: bool) -> tuple[torch.Tensor, float]:
        """Exact output and mean row entropy at one logit scale (cached)."""
        if (scale, shared) not in self._exact:
            q, k, v = self.inputs(scale, shared)
            self._exact[scale, shared] = (exact_output(q, k, v, self.mask),
                                          entropy(q, k, self.mask))
        return self._exact[scale, shared]

    def cost(self, key, attend, shared: bool) -> dict:
        if key not in self.costs:
            q, k, v = (x.to(self.q.device) for x in structured_qkv(1, *self.shape))
            one = torch.ones(1, self.shape[1], dtype=torch.bool, device=self.q.device)
            self.costs[key] = measure(attend, q, q if shared else k, v, one, self.repeats)
        return self.costs[key]

    def row(self, name: str, options: dict, scale: float, attend_of, source: str) -> dict:
        """One row of approximation.csv: `attend_of(heads, seq, head_dim)` builds the attention
        (ours or a peer's) at `options`; a failure becomes the row's status."""
        shared = shared_qk(name)
        row = {"attention": name, "options": describe(name, options), "inputs": self.kind,
               "seq_len": self.shape[1], "scale": scale, "source": source}
        try:
            attend = attend_of(*self.shape)
            exact, ent = self.reference(scale, shared)
            error = error_of(attend, *self.inputs(scale, shared), self.mask, exact)
            spent = self.cost((source, name, row["options"], self.shape), attend, shared)
            return {**row, "entropy": ent, "relative_error": error,
                    "fwd_bwd_ms": spent["fwd_bwd_ms"], "peak_memory_mb": spent["peak_memory_mb"],
                    "status": spent["status"]}
        except Exception as err:  # noqa: BLE001 - recorded as the row's status
            return {**row, "entropy": "", "relative_error": "", "fwd_bwd_ms": "",
                    "peak_memory_mb": "", "status": failure_status(err)}

    def uniform_row(self) -> dict:
        """The trivial estimate, every output row the mean of v: the floor to beat."""
        exact, ent = self.reference(1.0, False)
        uniform = self.v.mean(dim=2, keepdim=True).expand_as(self.v)
        return {"attention": "uniform", "options": "-", "inputs": self.kind,
                "seq_len": self.shape[1], "scale": 1.0, "entropy": ent,
                "relative_error": float(per_head_error(uniform, exact, self.mask).mean()),
                "fwd_bwd_ms": "", "peak_memory_mb": "", "source": "reference", "status": "ok"}
