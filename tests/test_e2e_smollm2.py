"""End to end on the real embedded SmolLM2-135M (converted once into the user cache)."""

import pytest

from superscopes_nn.testing.hook_reference import hf_patch_generate
from superscopes_nn import ENTITY_PROMPT, Target, run_rows, sweep_rows

pytestmark = pytest.mark.slow


def test_smollm2_sweep_matches_hooks_batched_and_remote_local(smollm2):
    rows = sweep_rows(smollm2, ["Alexander the Great", "Pink Floyd"], token=-1, layers=[2, 9, 20],
                      sites=["mlp_out", "residual"], alphas=[1, 6], target=Target(ENTITY_PROMPT))
    df = run_rows(smollm2, rows, max_new_tokens=6)
    hf = smollm2._module
    for r, got in list(zip(rows, df.token_ids))[::3]:
        want = hf_patch_generate(hf, hf, list(r.source_ids), r.source_position, r.source_layer, r.site,
                                 list(r.target_ids), r.target_position, r.target_layer, r.mapping, 6)
        assert got == want
    single = run_rows(smollm2, rows[:8], max_new_tokens=6, max_batch_size=1, shared_prefix=False)
    assert single.token_ids.tolist() == df.token_ids.tolist()[:8]
    local = run_rows(smollm2, rows[:8], max_new_tokens=6, remote="local")
    assert local.token_ids.tolist() == df.token_ids.tolist()[:8]
    assert df.interpretation.str.len().gt(0).all()
