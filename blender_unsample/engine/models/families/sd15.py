"""Stable Diffusion 1.5: one CLIP text encoder, 512 px, AnimateDiff v1-v3 motion modules."""

from ...protocol import DEFAULT_MODELS, FAMILY_NAMES
from .family import Family

NAME = "sd15"

# fmt: off
SD15 = Family(
    name=NAME,
    label=FAMILY_NAMES[NAME],
    cross_attention_dim=768,
    text_width=768,
    text_encoder_count=1,
    size_conditioned=False,
    first_level_attention=True,
    deep_transformers=False,
    unet_levels=4,
    checkpoint_marker="cond_stage_model.transformer.",
    text_encoders={"text_encoder": "cond_stage_model.transformer."},
    text_encoder_classes=("CLIPTextModel",),
    vae_scaling_factor=0.18215,
    vae_upcast=False,
    empty_negative_may_be_zeros=False,
    vae_batch=8,
    vae_batch_fp16=8,
    controlnet_config_repo="lllyasviel/control_v11p_sd15_canny",
    checkpoint_config_repo=DEFAULT_MODELS[NAME].checkpoint,
    motion_releases={
        "v1": "guoyww/animatediff-motion-adapter-v1-5",
        "v2": "guoyww/animatediff-motion-adapter-v1-5-2",
        "v3": "guoyww/animatediff-motion-adapter-v1-5-3",
    },
    ays_sigmas=(14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
                0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582),
)
# fmt: on
