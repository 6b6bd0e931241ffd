"""The unsampling method, in pure torch: noise schedules, convergent samplers run either way, the
denoiser contract, context windows and their fusion, and the unsample and resample passes.

Nothing here imports diffusers, transformers or the other layers: any model that answers
``denoised = model(x, sigma, **extra)`` can be unsampled with it.
"""
