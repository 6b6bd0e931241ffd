"""Stable Diffusion XL: two text encoders (CLIP, and OpenCLIP's with projection), 1024 px, the
AnimateDiff SDXL and Hotshot-XL motion modules (models/hotshot.py)."""

from .family import Family

SDXL = Family(
    name="sdxl",
    text_encoders={
        "text_encoder": "conditioner.embedders.0.transformer.",
        "text_encoder_2": "conditioner.embedders.1.model.",
    },
    text_encoder_classes=("CLIPTextModel", "CLIPTextModelWithProjection"),
    vae_scaling_factor=0.13025,
    vae_upcast=True,
    empty_negative_may_be_zeros=True,
    # At 1024 px its VAE needs about 3 GB a frame in fp32 (1.5 in fp16): more runs a 12 GB card out of memory.
    vae_batch=1,
    vae_batch_fp16=2,
    controlnet_config_repo="diffusers/controlnet-canny-sdxl-1.0",
)
