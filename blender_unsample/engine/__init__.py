"""The diffusion side: runs in the worker process or from the command line; never imports bpy."""
