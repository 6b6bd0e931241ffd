"""A restyle batch on the Blender side: strips exported by a second Blender, the worker's frames
brought back as strips."""
