"""Stable Diffusion 1.5: one CLIP text encoder, 512 px, AnimateDiff v1-v3 motion modules."""

from .family import Family

SD15 = Family(
    name="sd15",
    text_encoders={"text_encoder": "cond_stage_model.transformer."},
    text_encoder_classes=("CLIPTextModel",),
    vae_scaling_factor=0.18215,
    vae_upcast=False,
    empty_negative_may_be_zeros=False,
    vae_batch=8,
    vae_batch_fp16=8,
    controlnet_config_repo="lllyasviel/control_v11p_sd15_canny",
)
