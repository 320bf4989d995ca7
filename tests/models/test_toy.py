"""Toy tokenizer and TL-named weights moving between a HookedTransformer and a native TransformerBridge."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import needs_hooked_transformer
from tl_tensorsim.models.toy import build_tl_model, load_tl_state_dict, tl_state_dict, tl_weight_keys, toy_tokenizer


def test_toy_tokenizer_ids():
    tok = toy_tokenizer(["a", "b", "c"])
    assert tok("a c b")["input_ids"] == [3, 0, 2, 1]
    assert tok.bos_token_id == tok.eos_token_id == tok.pad_token_id == 3
    with pytest.raises(ValueError, match="words"):
        toy_tokenizer(["a", "a"])
    with pytest.raises(ValueError, match="words"):
        toy_tokenizer(["a b"])


@needs_hooked_transformer
@pytest.mark.parametrize("attn_only,norm", [(True, "LN"), (True, None), (False, "LN"), (False, "RMS")])
def test_weights_move_between_model_classes(attn_only, norm):
    fields = dict(
        n_layers=2,
        d_model=16,
        n_ctx=8,
        d_head=4,
        n_heads=4,
        d_vocab=11,
        attn_only=attn_only,
        normalization_type=norm,
        act_fn="gelu_new",
        d_mlp=None if attn_only else 32,
        seed=0,
        model_name="t",
    )
    ht = build_tl_model(fields, backend="hooked")
    with torch.no_grad():
        for p in ht.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = tl_state_dict(ht)
    assert list(state) == tl_weight_keys(ht.cfg)
    bridge = load_tl_state_dict(build_tl_model(fields, backend="bridge"), state)
    tokens = torch.randint(0, 11, (3, 8))
    with torch.no_grad():
        torch.testing.assert_close(bridge(tokens), ht(tokens), atol=1e-5, rtol=1e-5)
    for k, v in tl_state_dict(bridge).items():
        assert torch.equal(v, state[k]), k
    with pytest.raises(ValueError, match="missing"):
        load_tl_state_dict(ht, {k: v for k, v in state.items() if k != "embed.W_E"})
    with pytest.raises(ValueError, match="backend"):
        build_tl_model(fields, backend="nope")
