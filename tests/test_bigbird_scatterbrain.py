"""BigBird (attention_zoo/bigbird.py) and Scatterbrain (scatterbrain.py), by value against
computations written out here."""
from __future__ import annotations

import pytest
import torch

from attention_zoo import build_attention
from attention_zoo.bigbird import BigBirdOptions
from attention_zoo.registry import AttentionError
from attention_zoo.scatterbrain import ScatterbrainOptions


def bigbird(**options):
    return build_attention("bigbird", num_heads=2, head_dim=4, max_seq_len=64, block_size=2,
                           seed=0, **options)


def written_out_key_blocks(real, window_blocks, num_random, priorities):
    """For each query block of one example (real: list of bools per block), the set of key
    blocks of the BigBird docstring: the window (window_blocks // 2 each side), the first block
    and the example's last real block, and the num_random highest-priority real blocks outside
    those."""
    nb, half = len(real), window_blocks // 2
    last = max([i for i in range(nb) if real[i]], default=0)
    sets = []
    for i in range(nb):
        seen = {j for j in range(i - half, i + half + 1) if 0 <= j < nb} | {0, last}
        candidates = [j for j in range(nb) if real[j] and j not in seen]
        ranked = sorted(candidates, key=lambda j: -priorities[i, j])[:num_random]
        sets.append(seen | set(ranked))
    return sets


@pytest.mark.parametrize("window_blocks, num_random", [(5, 2), (3, 1), (1, 3)])
def test_bigbird_key_blocks_are_the_window_the_globals_and_the_top_random_ones(window_blocks,
                                                                            num_random):
    """12 blocks, an example whose last 3 blocks are padding: the used slots of key_blocks
    name exactly the written-out sets (window_blocks 5: two neighbours each side)."""
    attn = bigbird(window_blocks=window_blocks, num_random=num_random)
    real = torch.tensor([[True] * 9 + [False] * 3])
    last = torch.tensor([8])
    index, used = attn.key_blocks(real, torch.stack([torch.zeros_like(last), last], dim=-1))
    for h in range(2):
        want = written_out_key_blocks(real[0].tolist(), window_blocks, num_random,
                                      attn.priorities[h, :12, :12])
        got = [set(index[0, h, i][used[0, h, i]].tolist()) for i in range(12)]
        assert got == want, h


def test_bigbird_options_are_checked_with_the_attention_and_option_named():
    BigBirdOptions(block_size=1, num_random=0, window_blocks=1, redraw_every=1, seed=0)
    BigBirdOptions(redraw_every=None, seed=None)
    for key, value, low, nullable in (("block_size", 0, 1, ""), ("num_random", -1, 0, ""),
                                      ("window_blocks", 0, 1, ""),
                                      ("redraw_every", 0, 1, " or null"),
                                      ("seed", -1, 0, " or null")):
        with pytest.raises(AttentionError) as error:
            BigBirdOptions(**{key: value})
        assert str(error.value) == f"bigbird: {key} must be an int >= {low}{nullable}, got {value}"


def test_scatterbrain_options_check_the_window_and_allow_zero():
    ScatterbrainOptions(window=0)
    with pytest.raises(AttentionError) as error:
        ScatterbrainOptions(window=-1)
    assert str(error.value) == "scatterbrain: window must be an int >= 0, got -1"
    assert ScatterbrainOptions().window_shape == "half_open"
    with pytest.raises(AttentionError) as error:
        ScatterbrainOptions(window_shape="left")
    assert str(error.value) == ("scatterbrain: window_shape must be one of half_open, symmetric, "
                                "got 'left'")



def test_scatterbrain_scales_each_query_row_by_its_own_logits():
    """An example with logits near 300 in the batch leaves the other example's output as it is
    alone: each row's reference is its own (one shared with the loud example would underflow
    every exp of the quiet one to 0)."""
    torch.manual_seed(0)
    attn = build_attention("scatterbrain", num_heads=1, head_dim=4, max_seq_len=16,
                           num_features=16, window=4, seed=0)
    x = torch.randn(2, 1, 8, 4)
    x[0] *= 12  # |q|^2 / sqrt(d) about 300 on the diagonal
    mask = torch.ones(2, 8, dtype=torch.bool)
    together = attn(x, x, x, mask)
    alone = attn(x[1:], x[1:], x[1:], mask[1:])
    assert together[1].abs().sum() > 0
    torch.testing.assert_close(together[1:], alone, rtol=1e-5, atol=1e-6)
