"""Add-on preferences: where models, the worker Python and the cache live, and how a job shares
the GPU's memory (a property of the machine, not of the scene)."""

import bpy

from ..prefs import ADDON_ID, GPU_MEMORY_OPTIONS
from ..properties import spec_property
from ..worker.cluster import ADDRESS_PLACEHOLDER, forget_cluster_reports
from ..worker.process import forget_worker_reports
from .status import draw_cluster_state, draw_setup_gate, draw_setup_state


def _forget_reports() -> None:
    """Another worker Python: ask it again what it has, and what the cluster has."""
    forget_worker_reports()
    forget_cluster_reports()


class UnsamplePreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    worker_python: bpy.props.StringProperty(
        name="Worker Python",
        description=(
            "Python that runs the diffusion worker. Empty: Blender's own Python with the bundled "
            "packages. Or an existing environment that already has torch (e.g. ComfyUI's)"
        ),
        subtype="FILE_PATH",
        update=lambda self, context: _forget_reports(),
    )
    package_index: bpy.props.StringProperty(
        name="Package Index",
        description=(
            "Advanced: where Set Up Worker takes packages from. Empty: PyPI, and PyTorch's own index for "
            "the torch build that fits this machine. Or an index URL (a studio mirror) or a folder of wheels "
            "(a path or file:// URL): then every package comes from there, and a folder needs no network"
        ),
    )
    device: bpy.props.EnumProperty(
        name="Device",
        items=(
            ("auto", "Automatic", "NVIDIA GPU if present, then Apple GPU, then the CPU"),
            ("cuda", "NVIDIA GPU (CUDA)", "Half precision on the first CUDA device"),
            ("mps", "Apple GPU (MPS)", "Metal on Apple Silicon"),
            ("cpu", "CPU", "Slow, but works everywhere"),
        ),
        default="auto",
    )
    cluster: bpy.props.EnumProperty(
        name="Cluster",
        description="Where jobs run: on the worker alone, or on a Ray cluster (the worker needs Ray: Set Up Worker "
        "installs it while this is on)",
        items=(
            ("NONE", "None", "One worker on this machine's device, one strip after another"),
            (
                "LOCAL", "This Machine's GPUs", "A Ray cluster of this machine's GPUs, started for each job: a batch's "
                "strips run at once, one per GPU; a single strip shares its context windows among them",
            ),
            (
                "ADDRESS", "Ray Cluster", "A running Ray cluster at an address: a batch's strips run at once, one per "
                "GPU worker; a single strip shares its context windows among them",
            ),
        ),
        default="NONE",
    )  # fmt: skip
    cluster_address: bpy.props.StringProperty(
        name="Cluster Address",
        description=(
            "The Ray cluster's address: host:port of its head node (port 6379), or ray://host:10001 (Ray Client). "
            "Every node needs the worker's packages and Ray"
        ),
    )
    cluster_token_file: bpy.props.StringProperty(
        name="Cluster Token File",
        description=(
            "The Ray cluster's token, as a file: copy ~/.ray/auth_token from its head node ('ray get-auth-token' "
            "prints it). Empty: Ray's own places (RAY_AUTH_TOKEN, ~/.ray/auth_token). Only the file's path is kept "
            "here, never the token"
        ),
        subtype="FILE_PATH",
    )
    cluster_allow_unauthenticated: bpy.props.BoolProperty(
        name="Allow Clusters Without a Token",
        description=(
            "Join a Ray cluster that asks for no token. Anyone who can reach such a cluster can run code on its "
            "machines and read the frames sent to it: only on a network you trust completely"
        ),
        default=False,
    )
    models_folder: bpy.props.StringProperty(
        name="Models Folder",
        description=(
            "Folder of your models: a model field may then hold just a folder name inside it "
            "(checkpoints, motion modules, ControlNets and VAEs as diffusers folders)"
        ),
        subtype="DIR_PATH",
    )
    cache_folder: bpy.props.StringProperty(
        name="Cache Folder",
        description="Job folders and cached unsampled latents. Empty: the extension's user folder",
        subtype="DIR_PATH",
    )
    cache_limit_gb: bpy.props.FloatProperty(
        name="Unsample Cache Size",
        description=(
            "Most disk space the cached unsampled latents may use (GB); the least recently used go first. "
            "A restyle with a new style prompt reuses them and skips the unsample pass"
        ),
        default=4.0,
        min=0.0,
        max=1024.0,
    )
    chunk_feed_forward: spec_property("chunk_feed_forward", "Chunk Feed-Forward")
    vae_batch: spec_property("vae_batch", "Frames per VAE Call")
    cpu_offload: spec_property("cpu_offload", "CPU Offload")
    vae_tiling: spec_property("vae_tiling", "VAE Tiling")
    allow_downloads: bpy.props.BoolProperty(
        name="Download Missing Models",
        description=(
            "Fetch default models from the Hugging Face Hub, and let Set Up Worker download packages "
            "(also needs Allow Online Access)"
        ),
        default=True,
    )

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.use_property_split = True
        row = layout.row(align=True)
        row.prop(self, "worker_python")
        row.operator("sequencer.unsample_setup_worker", text="Set Up Worker", icon="IMPORT")
        draw_setup_state(layout, context, 600)
        draw_setup_gate(layout, context, 600, downloads=False)  # Download Missing Models is further down
        layout.prop(self, "package_index", placeholder="PyPI, and PyTorch's index for this machine")
        layout.prop(self, "device")
        layout.prop(self, "cluster")
        if self.cluster == "ADDRESS":
            layout.prop(self, "cluster_address", placeholder=ADDRESS_PLACEHOLDER)
            layout.prop(self, "cluster_token_file", placeholder="Ray's own: ~/.ray/auth_token")
            layout.prop(self, "cluster_allow_unauthenticated")
            if self.cluster_allow_unauthenticated:
                layout.label(text="A cluster without a token runs code from anyone who reaches it", icon="ERROR")
        draw_cluster_state(layout, context, 600)
        layout.prop(self, "models_folder")
        layout.prop(self, "cache_folder")
        layout.prop(self, "cache_limit_gb")
        memory = layout.column(heading="GPU Memory")
        for name in GPU_MEMORY_OPTIONS:
            memory.prop(self, name)
        row = layout.row()
        row.prop(self, "allow_downloads")
        if not bpy.app.online_access:
            row.active = False
            layout.label(text="Online access is off in Blender's System preferences", icon="INFO")


classes = (UnsamplePreferences,)
register, unregister = bpy.utils.register_classes_factory(classes)
