"""Stable Diffusion XL: two text encoders (CLIP, and OpenCLIP's with projection), 1024 px, the
AnimateDiff SDXL and Hotshot-XL motion modules (models/hotshot.py)."""

from ...protocol import DEFAULT_MODELS, FAMILY_NAMES
from .family import Family

NAME = "sdxl"

# fmt: off
SDXL = Family(
    name=NAME,
    label=FAMILY_NAMES[NAME],
    cross_attention_dim=2048,  # both encoders' states side by side (768 + 1280)
    text_width=768,
    text_encoder_count=2,
    size_conditioned=True,
    first_level_attention=False,
    deep_transformers=True,  # 2 and 10 transformer layers at its lower levels
    unet_levels=3,
    checkpoint_marker="conditioner.embedders.1.model.",
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
    checkpoint_config_repo=DEFAULT_MODELS[NAME].checkpoint,
    motion_releases={"sdxl": "guoyww/animatediff-motion-adapter-sdxl-beta"},
    ays_sigmas=(14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
                0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582),
)
# fmt: on
