"""What makes a model family a family: the facts the loading code and the job read from it, so that
no other module needs an ``if family == ...``. Plain shared facts (names, default models, native
size) stay in protocol.py, which the add-on reads too."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Signature:
    """What tells a family's files from another's, as families/detect.py reads them off configs,
    file headers and LoRA names. Families Unsample recognises but does not run (SD 2.x) have only
    this, so that their files are refused by name."""

    name: str
    label: str  # for people, in messages
    cross_attention_dim: int  # the width of the text its UNet attends to (attn2's keys and values)
    text_width: int  # its first text encoder's width
    text_encoder_count: int
    size_conditioned: bool  # pooled text and image sizes join the time embedding (diffusers' "text_time")
    first_level_attention: bool  # its UNet's first level has attention blocks
    deep_transformers: bool  # some attention blocks hold more than one transformer layer
    unet_levels: int  # UNet resolution levels; AnimateDiff's motion modules follow them
    checkpoint_marker: str  # a tensor-name prefix only its original-layout checkpoints have


@dataclass(frozen=True)
class Family(Signature):
    # Its text encoders, in order, by diffusers' folder name, each with the prefix of its tensors in
    # an original-layout single file; and transformers' class for each.
    text_encoders: dict[str, str]
    text_encoder_classes: tuple[str, ...]
    vae_scaling_factor: float  # tells its VAE from another family's of the same latent size
    vae_upcast: bool  # its original VAE overflows in fp16 (the VAE's force_upcast then says so)
    empty_negative_may_be_zeros: bool  # a pipeline config may ask for zeros for an empty negative prompt
    vae_batch: int  # frames per VAE call by default, in fp32
    vae_batch_fp16: int  # ... and in fp16
    controlnet_config_repo: str  # the configs that fit its original-layout ControlNet files
    checkpoint_config_repo: str  # ... and its whole checkpoints and VAEs (protocol's default checkpoint)
    # AnimateDiff's motion module releases for it, each with the diffusers repo that has its config.
    motion_releases: dict[str, str]
    ays_sigmas: tuple[float, ...]  # Align Your Steps' published 10-step list (Sabour et al., 2024)

    @property
    def tokenizers(self) -> list[str]:
        """diffusers' tokenizer folders, one per text encoder."""
        return [encoder.replace("text_encoder", "tokenizer") for encoder in self.text_encoders]
