"""The same job on a Ray cluster (optional: needs the `cluster` extra, Ray, in the worker's Python).

Two ways to use many workers, each a Ray actor on one GPU that loads its models once:
- many strips: each worker restyles whole strips, one at a time (:mod:`.strips`);
- one strip: at every sampling step its context windows are spread over the workers and fused
  here exactly as on one GPU, so the frames are the same (:mod:`.windows`).
Nothing here is imported unless a job asks for a cluster.
"""
