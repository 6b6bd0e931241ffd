"""One restyle job: frames in and out, prompts, devices and memory placement, the latent cache, the
pipeline that runs the method over the loaded models, progress, and the worker's command line."""
