"""Replay a captured nnsight request the way a server would, in a fresh interpreter.

Run with ``python -I tests/replay_request.py REQUEST MODEL_DIR OUT`` where MODEL_DIR
is a saved HF checkpoint. ``superscopes_nn`` is made unimportable first: the
request must carry everything it needs. Writes the saved token ids (``outs[0][0]``) with torch.save.
"""

import importlib.abc
import sys


class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "superscopes_nn":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked for the replay)")
        return None


sys.meta_path.insert(0, _Block())
for name in list(sys.modules):
    if name.split(".")[0] == "superscopes_nn":
        del sys.modules[name]


def main(request_path, model_dir, out_path):
    import torch
    from nnsight.modeling.transformers import TransformersModel
    from nnsight.schema.request import RequestModel
    from nnsight.tracing.tracer import dec, inc
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = TransformersModel(hf, tokenizer=tok)
    with open(request_path, "rb") as fh:
        blob = fh.read()
    compressed = blob[:4] == b"\x28\xb5\x2f\xfd"  # zstd magic: CONFIG.API.COMPRESS was on
    tracer = RequestModel.deserialize(blob, model._remoteable_persistent_objects(), compress=compressed)
    inc()
    try:
        tracer.execute(tracer.info.code)
    finally:
        dec()
    loaded = sorted(n for n in sys.modules if n.split(".")[0] == "superscopes_nn")
    torch.save({"ids": tracer.info.frame.f_locals["outs"][0][0], "loaded": loaded}, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:4])
