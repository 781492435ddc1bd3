"""The logit lens equals the last-layer Patchscope and, at the last layer, the model's logits."""

import pytest
import torch

from superscopes_nn.lens import lens_logits, logit_lens
from superscopes_nn.api import patched_logits
from superscopes_nn.resolver import resolve
from superscopes_nn.specs import Source, Target
from superscopes_nn.testing import tiny_model


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2", "gpt_neox"])
def test_lens_is_last_layer_patchscope(arch):
    model = tiny_model(arch)
    prompt = "Alexander the Great was a king"
    n = model._module.config.num_hidden_layers
    got = lens_logits(model, prompt, range(n), position=-2)
    rows = resolve(model, [(Source(prompt, l, -2), Target(prompt, layer=n - 1, position=-2), None) for l in range(n)])
    torch.testing.assert_close(got, patched_logits(model, rows), rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        final = model._module(torch.tensor([model.tokenizer(prompt)["input_ids"]])).logits[0, -2]
    torch.testing.assert_close(got[-1], final, rtol=1e-4, atol=1e-4)


def test_logit_lens_frame_and_remote_local():
    model = tiny_model("llama")
    df = logit_lens(model, "Pink Floyd", k=2)
    assert list(df.columns) == ["prompt", "layer", "rank", "token", "token_id", "prob"]
    assert len(df) == 4 * 2 and df.prob.between(0, 1).all()
    sim = logit_lens(model, "Pink Floyd", k=2, remote="local")
    assert sim.token_id.tolist() == df.token_id.tolist()
    with pytest.raises(ValueError, match="layer 9 out of range"):
        logit_lens(model, "Pink Floyd", layers=[9])
