"""Which generated tokens belong to a response: a prefix that ends at the first EOS."""

from __future__ import annotations

from typing import Iterable, Union

import torch
from torch import Tensor


def response_attention_mask(responses: Tensor, eos_ids: Union[int, Iterable[int]],
                            pad_token_id: int) -> tuple[Tensor, Tensor]:
    """Mask of real response tokens (up to and including the first token of the EOS set) and whether
    each row has one.

    ``responses`` is ``[N, R]``; the mask is a prefix: tokens after the first EOS are masked out, and
    so is everything from the first pad token on (a pad the model sampled ends the response, which
    then counts as having no EOS if the pad comes first). ``eos_ids`` may hold one id or several.
    """
    eos_ids = [eos_ids] if isinstance(eos_ids, int) else sorted(set(eos_ids))
    eos = torch.as_tensor(eos_ids, dtype=responses.dtype, device=responses.device)
    is_eos = torch.isin(responses, eos).long()
    ended = is_eos.cumsum(-1) - is_eos > 0  # strictly after the first EOS
    if pad_token_id not in eos_ids:
        ended |= (responses == pad_token_id).long().cumsum(-1) > 0  # from the first pad token on
    is_eos = is_eos.bool() & ~ended
    has_eos = is_eos.any(-1)
    return (~ended).long(), has_eos
