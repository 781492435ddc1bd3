"""The logit lens equals the last-layer Patchscope and, at the last layer, the model's logits."""

import pytest
import torch

from superscopes_nn.engine.lens import lens_logits, logit_lens
from superscopes_nn.engine.api import patched_logits
from superscopes_nn.engine.rows import resolve
from superscopes_nn.core.specs import Source, Target
from superscopes_nn.testing.tiny_models import tiny_model


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


def test_logit_lens_labels_negative_and_unsorted_layers():
    """layers=[-1, 0]: each labelled row equals the lens computed for that layer alone."""
    model = tiny_model("llama")
    n = model._module.config.num_hidden_layers
    prompt = "Alexander the Great was a king"
    df = logit_lens(model, prompt, layers=[-1, 0], k=3)
    assert sorted(set(df.layer)) == [0, n - 1]
    for layer in (0, n - 1):
        alone = lens_logits(model, prompt, [layer]).float().softmax(-1)[0]
        top = alone.topk(3)
        got = df[df.layer == layer].sort_values("rank")
        assert got.token_id.tolist() == top.indices.tolist(), f"layer {layer}"
        torch.testing.assert_close(torch.tensor(got.prob.tolist(), dtype=torch.float64), top.values.double(), rtol=1e-5, atol=1e-6)
    assert df[df.layer == 0].token_id.tolist() != df[df.layer == n - 1].token_id.tolist()
    # lens_logits keeps the order asked for: [-1, 0] gives the last layer's row first
    both = lens_logits(model, prompt, [-1, 0])
    torch.testing.assert_close(both[0], lens_logits(model, prompt, [n - 1])[0])
    torch.testing.assert_close(both[1], lens_logits(model, prompt, [0])[0])
