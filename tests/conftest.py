import os

# Must be set before transformers / huggingface_hub are imported: offline, fail fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Tests use tiny models: one intra-op thread is faster (no spin contention) and deterministic.
torch.set_num_threads(1)
