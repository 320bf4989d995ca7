"""`demos/gpt2_circuits.load_gpt2(model_path=...)`: a local Hugging Face GPT-2 folder converted without the hub gives
the Hugging Face model's logits (a tiny random GPT-2 stands in for the real weights)."""

from __future__ import annotations

import torch

from tests.conftest import needs_hooked_transformer


@needs_hooked_transformer  # the conversion is TransformerLens 3.x's convert_gpt2_weights
def test_local_folder_matches_hugging_face(tmp_path, gpt2_tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    from tl_tensorsim.demos.gpt2_circuits import load_gpt2

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=50257)).eval()
    hf.save_pretrained(tmp_path)
    view = load_gpt2(str(tmp_path), tokenizer=gpt2_tok)
    tokens = torch.tensor([[50256, 15496, 995, 5335, 1757]])
    with torch.no_grad():
        ours, theirs = view.model(tokens), hf(tokens).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    assert view.processing()["fold_ln"] is False and view.cfg.n_ctx == 64
