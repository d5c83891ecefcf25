"""models.guard on (B, T) integer inputs (the text encoder's token ids and mask), with a dynamic T."""

import torch
from torch import nn

from models.guard import Guarded


class MaskedMean(nn.Module):
    """(B, T) ids, (B, T) mask -> (B, 2): a stand-in with the text encoder's signature."""

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.float()
        mean = (ids.float() * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)
        return torch.cat([mean, m.sum(1, keepdim=True)], dim=1)


def test_rows_with_an_id_or_mask_out_of_range_answer_nan_and_batch_mates_do_not_move():
    guard = Guarded(MaskedMean(), {0: (0, 100), 1: (0, 2)}).eval()
    ids = torch.tensor([[5, 6, 7], [8, 100, 1], [3, 4, 0], [1, 2, 3]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 2, 0], [1, 1, 0]])
    out = guard(ids, mask)
    assert torch.isnan(out[1]).all() and torch.isnan(out[2]).all()  # id 100 >= hi; mask value 2
    good = [0, 3]
    torch.testing.assert_close(out[good], MaskedMean()(ids[good], mask[good]))


def test_the_sequence_axis_may_take_any_length_including_one():
    guard = Guarded(MaskedMean(), {0: (0, 100), 1: (0, 2)}).eval()
    for t in (1, 2, 9):
        ids = torch.randint(0, 100, (4, t))
        mask = torch.ones(4, t, dtype=torch.int64)
        ids[2, 0] = -1
        out = guard(ids, mask)
        assert torch.isnan(out[2]).all() and not torch.isnan(out[[0, 1, 3]]).any()
