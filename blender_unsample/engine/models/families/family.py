"""What makes a model family a family: the facts the loading code and the job read from it, so that
no other module needs an ``if family == ...``. Plain shared facts (names, default models, native
size) stay in protocol.py, which the add-on reads too."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str  # protocol.FAMILIES' key
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

    @property
    def tokenizers(self) -> list[str]:
        """diffusers' tokenizer folders, one per text encoder."""
        return [encoder.replace("text_encoder", "tokenizer") for encoder in self.text_encoders]
