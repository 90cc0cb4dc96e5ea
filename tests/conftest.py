import os

# Must be set before transformers / huggingface_hub are imported: offline, fail fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["OMP_NUM_THREADS"] = "1"  # what CLI commands run in-process take as their --threads default

import pytest  # noqa: E402
import torch  # noqa: E402

# Tests use tiny models: one intra-op thread is faster (no spin contention) and deterministic.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_sd_pipeline(tmp_path_factory):
    """A saved, randomly initialised StableDiffusionPipeline built from configs (toy tokenizer vocab):
    the stand-in for any hub text-to-image pipeline, loaded back through the real path-based route."""
    import json

    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("sd")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, cross_attention_dim=16,
                                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
                                  attention_head_dim=2),
        vae=AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                          up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4),
        text_encoder=CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, hidden_size=16, intermediate_size=32,
                                                  num_attention_heads=2, num_hidden_layers=1, vocab_size=len(vocab),
                                                  max_position_embeddings=16)),
        tokenizer=CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=16),
        scheduler=DDIMScheduler(steps_offset=1, clip_sample=False), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.save_pretrained(root / "pipe")
    return root / "pipe"


@pytest.fixture(scope="session")
def tiny_mask2former_dir(tmp_path_factory):
    """A saved, randomly initialised transformers Mask2Former (tiny Swin, 80 COCO classes)."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    torch.manual_seed(0)
    swin = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4, image_size=64,
                      out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = Mask2FormerConfig(backbone_config=swin, feature_size=32, mask_feature_size=32, hidden_dim=32,
                            encoder_feedforward_dim=32, dim_feedforward=32, encoder_layers=1, decoder_layers=2,
                            num_attention_heads=2, num_queries=12, num_labels=80)
    path = tmp_path_factory.mktemp("m2f")
    Mask2FormerForUniversalSegmentation(cfg).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def demo_quick(tmp_path_factory):
    """A project folder where `lightgen-bench demo --quick --work runs/demo` has run (results in
    runs/demo/results): what the README's examples expect to find, made once per session."""
    from click.testing import CliRunner

    from bench.cli import main

    root = tmp_path_factory.mktemp("project")
    result = CliRunner().invoke(main, ["demo", "--quick", "--work", str(root / "runs" / "demo")])
    assert result.exit_code == 0, result.output
    return root
