import time, sys, os
t=time.time()
try:
    from huggingface_hub import HfApi
    HfApi().model_info("meta-llama/Llama-3.1-8B")
except Exception as e:
    print("model_info", type(e).__name__, str(e)[:200], round(time.time()-t,1))
t=time.time()
try:
    from transformers import AutoConfig
    AutoConfig.from_pretrained("meta-llama/Llama-3.1-8B")
except Exception as e:
    print("AutoConfig", type(e).__name__, str(e)[:200], round(time.time()-t,1))
