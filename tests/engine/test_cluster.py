"""Jobs on a Ray cluster: one local Ray for the test session, two logical GPUs, tiny models on the CPU.

Ray lets a machine declare GPUs it does not have; each worker takes one, and computes on the CPU.
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_clip
from PIL import Image

from blender_unsample.engine.errors import Cancelled, UnsampleError
from blender_unsample.engine.job.pipeline import restyle
from blender_unsample.engine.protocol import CLUSTER_FAILURE_KEYS, Done, ErrorCode, ErrorEvent, Progress

ray = pytest.importorskip("ray", reason="the cluster tests need the cluster extra (Ray)")

from blender_unsample.engine.cluster.connect import check_reachable, runtime_env, split_address  # noqa: E402
from blender_unsample.engine.cluster.run import run_on_cluster  # noqa: E402
from blender_unsample.engine.cluster.windows import RemoteWindows, split_evenly  # noqa: E402


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray with 2 CPUs and 2 logical GPUs, the engine shipped to it as the command line does."""
    if ray.is_initialized():
        ray.shutdown()
    staged = tmp_path_factory.mktemp("ray-code")
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env(staged))
    yield ray
    ray.shutdown()


def light(tiny_spec, frames_dir, out, **changes):
    """Few steps, no refinement: the identity holds step by step, so more steps prove no more."""
    settings = dict(out=str(out), steps=2, inversion_refinement=0)
    return tiny_spec(frames_dir, **{**settings, **changes})


def frames_of(folder):
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def assert_same_frames(a, b):
    first, second = frames_of(a), frames_of(b)
    assert first and first.keys() == second.keys()
    different = [name for name in first if not np.array_equal(first[name], second[name])]
    assert not different, f"{len(different)} of {len(first)} frames differ, first {different[0]}"


def test_one_long_strip_over_two_workers_gives_the_frames_of_one_process(cluster, tiny_spec, tmp_path, monkeypatch):
    from blender_unsample.engine.cluster import run

    pools = []
    monkeypatch.setattr(run, "RemoteWindows", lambda *args: pools.append(RemoteWindows(*args)) or pools[-1])
    write_clip(tmp_path / "frames", 40)
    restyle(light(tiny_spec, tmp_path / "frames", tmp_path / "alone"), lambda event: None)

    events = []
    spec = light(tiny_spec, tmp_path / "frames", tmp_path / "cluster")
    assert run_on_cluster([spec], "auto", 0, events.append, threading.Event()) == [None]

    assert_same_frames(tmp_path / "alone", tmp_path / "cluster")
    windows = {e.windows for e in events if isinstance(e, Progress) and e.stage == "resample"}
    assert windows == {7}, "40 frames in windows of 8 overlapping by 2 are 7 windows"
    assert isinstance(events[-1], Done) and events[-1].frames == 40
    # The windows were shared: at every model evaluation each of the two workers, processes other
    # than this one, computed its run of them (7 windows: 4 and 3).
    [pool] = pools
    steps = 2 * spec.steps  # the unsample and the resample pass, without refinement
    assert len(pool.stats) == steps, "every evaluation went to the workers"
    for stats in pool.stats:
        assert sorted(stats.windows_by_worker.values()) == [3, 4], stats.windows_by_worker
        assert not any(worker.endswith(f":{os.getpid()}") for worker in stats.windows_by_worker)
    assert len({worker for stats in pool.stats for worker in stats.windows_by_worker}) == 2


@pytest.mark.slow
def test_a_worker_killed_mid_job_is_replaced_and_the_frames_are_the_same(cluster, tiny_spec, tmp_path):
    write_clip(tmp_path / "frames", 24)
    restyle(light(tiny_spec, tmp_path / "frames", tmp_path / "alone"), lambda event: None)

    killed = []

    def kill_one_worker(event):
        if isinstance(event, Progress) and event.stage == "resample" and not killed:
            name = next(n for n in ray.util.list_named_actors() if n.startswith("unsample-window-1"))
            ray.kill(ray.get_actor(name), no_restart=False)  # as a crash: Ray restarts it
            killed.append(name)

    spec = light(tiny_spec, tmp_path / "frames", tmp_path / "cluster")
    assert run_on_cluster([spec], "auto", 0, kill_one_worker, threading.Event()) == [None]
    assert killed
    assert_same_frames(tmp_path / "alone", tmp_path / "cluster")


def test_a_batch_of_three_strips_on_two_workers_each_as_alone_a_failure_reported_by_its_index(
    cluster, tiny_spec, tmp_path
):
    specs = []
    for i, frames in enumerate((6, 9, 4)):
        write_clip(tmp_path / f"frames{i}", frames, start=10 * i + 1)
        specs.append(light(tiny_spec, tmp_path / f"frames{i}", tmp_path / f"out{i}", prompt=f"style {i}"))
    specs[0] = light(tiny_spec, tmp_path / "frames0", tmp_path / "out0", controlnet=str(tmp_path / "no-controlnet"))
    restyle(light(tiny_spec, tmp_path / "frames1", tmp_path / "alone", prompt="style 1"), lambda event: None)

    events = []
    errors = run_on_cluster(specs, "auto", 0, events.append, threading.Event())

    assert errors[0].code == ErrorCode.MODEL_NOT_FOUND and errors[1:] == [None, None], "the others go on"
    assert [(e.job, e.code) for e in events if isinstance(e, ErrorEvent)] == [(0, "model_not_found")]
    done = {e.job: e.frames for e in events if isinstance(e, Done)}
    assert done == {1: 9, 2: 4}
    assert_same_frames(tmp_path / "alone", tmp_path / "out1")
    assert not frames_of(tmp_path / "out0")
    progress = [e for e in events if isinstance(e, Progress)]
    assert {e.jobs for e in progress} == {3}
    batch = [e.batch_fraction for e in progress]
    assert batch == sorted(batch) and 0 < batch[-1] <= 1, "the batch's progress only moves forward"


def test_strips_whose_workers_are_all_lost_fail_with_the_cluster_error_and_nothing_hangs(cluster, tiny_spec, tmp_path):
    write_clip(tmp_path / "frames", 4)
    specs = [light(tiny_spec, tmp_path / "frames", tmp_path / f"out{i}") for i in range(3)]

    def lose_the_worker(event):
        names = [n for n in ray.util.list_named_actors() if n.startswith("unsample-strip-")]
        if isinstance(event, Progress) and names:
            ray.kill(ray.get_actor(names[0]), no_restart=True)  # gone for good, as a machine taken away

    errors = run_on_cluster(specs, "auto", 1, lose_the_worker, threading.Event())
    assert [e.code for e in errors] == [ErrorCode.CLUSTER] * 3
    assert "every cluster worker was lost" in errors[2].message
    assert not any(frames_of(tmp_path / f"out{i}") for i in range(3))


def test_cancel_stops_every_worker_and_writes_nothing(cluster, tiny_spec, tmp_path):
    write_clip(tmp_path / "frames", 24)
    cancel = threading.Event()

    def cancel_in_unsample(event):
        if isinstance(event, Progress) and event.stage == "unsample":
            cancel.set()

    spec = light(tiny_spec, tmp_path / "frames", tmp_path / "out")
    with pytest.raises(Cancelled):
        run_on_cluster([spec], "auto", 0, cancel_in_unsample, cancel)
    assert not frames_of(tmp_path / "out")
    deadline = time.monotonic() + 10
    while [n for n in ray.util.list_named_actors() if n.startswith("unsample-")] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [n for n in ray.util.list_named_actors() if n.startswith("unsample-")], "a worker outlived the job"


def test_an_address_that_does_not_answer_fails_within_seconds_and_starts_nothing(tmp_path):
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "blender_unsample.engine", "doctor", "--cluster", "127.0.0.1:9"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == ErrorCode.CLUSTER.exit_code
    report = json.loads(result.stdout)
    assert tuple(report) == CLUSTER_FAILURE_KEYS
    assert report["ok"] is False and "127.0.0.1:9 does not answer" in report["error"]
    assert time.monotonic() - started < 30
    with pytest.raises(UnsampleError, match="does not answer") as error:
        check_reachable("127.0.0.1:9", seconds=0.5)
    assert error.value.code == ErrorCode.CLUSTER


def test_cluster_addresses_are_read_as_ray_writes_them():
    assert split_address("head-node:6379") == ("head-node", 6379)
    assert split_address("ray://10.0.0.5:10001") == ("10.0.0.5", 10001)
    assert split_address("ray://head") == ("head", 10001)
    assert split_address("head") == ("head", 6379)
    for bad in ("", "head:port", "head:0", "ray://:10001"):
        with pytest.raises(UnsampleError, match="not a Ray cluster address"):
            split_address(bad)


def test_windows_are_shared_out_in_runs_differing_by_at_most_one():
    windows = [[i] for i in range(7)]
    shares = split_evenly(windows, 3)
    assert [len(s) for s in shares] == [3, 2, 2]
    assert [w for share in shares for w in share] == windows
    assert split_evenly(windows[:1], 2) == [windows[:1], []]


def test_without_ray_the_cluster_says_how_to_install_it(monkeypatch):
    from blender_unsample.engine.cluster.connect import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(UnsampleError, match=r"requirements-cluster\.txt") as error:
        import_ray()
    assert error.value.code == ErrorCode.WORKER_SETUP
    assert "Set Up Worker" in error.value.message


def test_the_unsample_cache_serves_a_cluster_job_as_it_serves_one_process(cluster, tiny_spec, tmp_path):
    write_clip(tmp_path / "frames", 12)
    cache = str(tmp_path / "cache")
    same = dict(cache_dir=cache, unsample_prompt="a street")  # the unsample pass's own prompt: its key
    restyle(light(tiny_spec, tmp_path / "frames", tmp_path / "first", **same), lambda event: None)

    events = []
    spec = light(tiny_spec, tmp_path / "frames", tmp_path / "second", prompt="a watercolour", **same)
    assert run_on_cluster([spec], "auto", 0, events.append, threading.Event()) == [None]
    assert events[-1].unsample_cached, "a new style of the same frames takes the unsample pass from the cache"
    assert not [e for e in events if isinstance(e, Progress) and e.stage == "unsample" and e.windows]


def strip_worker_pids() -> list[int]:
    """The processes of the cluster's strip workers (Ray titles them after the actor's class)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(b"ray::StripWorker"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker's process in /proc")
def test_a_strip_worker_killed_mid_strip_is_restarted_and_keeps_the_frames_it_wrote(cluster, tiny_spec, tmp_path):
    write_clip(tmp_path / "frames", 12)
    write_clip(tmp_path / "other", 3)
    restyle(light(tiny_spec, tmp_path / "frames", tmp_path / "alone", vae_batch=1), lambda event: None)
    cache = str(tmp_path / "cache")  # as on the command line: the restarted strip finds its styled latents
    out = tmp_path / "out"
    specs = [
        light(tiny_spec, tmp_path / "frames", out, vae_batch=1, cache_dir=cache),
        light(tiny_spec, tmp_path / "other", tmp_path / "out-other", cache_dir=cache),
    ]
    written_before: dict[str, int] = {}
    done = threading.Event()

    def kill_once_a_frame_is_written():
        # As a crash while decoding: the worker's process killed once its first frames are on disk.
        while not done.is_set():
            if (out / "frame_0001.png").exists() and (pids := strip_worker_pids()):
                os.kill(pids[0], 9)
                written_before.update({p.name: p.stat().st_ino for p in out.glob("frame_*.png")})
                return
            time.sleep(0.001)

    killer = threading.Thread(target=kill_once_a_frame_is_written)
    killer.start()
    events = []
    try:
        errors = run_on_cluster(specs, "auto", 1, events.append, threading.Event())
    finally:
        done.set()
        killer.join()
    assert errors == [None, None]
    assert 0 < len(written_before) < 12, "killed mid-strip"
    assert_same_frames(tmp_path / "alone", out)
    [finished] = [e for e in events if isinstance(e, Done) and e.job == 0]
    assert finished.frames_reused == len(written_before), "the frames it had written were kept"
    rewritten = [n for n, inode in written_before.items() if (out / n).stat().st_ino != inode]
    assert not rewritten, f"written twice: {rewritten}"
    assert not list(out.glob(".unsample-*.partial")), "no half frame left"


def test_a_cancel_reaches_the_window_workers_between_windows_not_after_their_shares(
    cluster, tiny_spec, tmp_path, monkeypatch
):
    from blender_unsample.engine.cluster import run

    pools = []
    monkeypatch.setattr(run, "RemoteWindows", lambda *args: pools.append(RemoteWindows(*args)) or pools[-1])
    write_clip(tmp_path / "frames", 40, size=(128, 96))  # 7 windows: shares of 4 and 3, each window slow
    cancel, asked = threading.Event(), []

    def cancel_mid_share():
        share = pools[0].stats[-1].compute_seconds  # the busiest worker's whole share, just measured
        time.sleep(share / 10)  # the next evaluation's shares have just been handed out
        asked.append((time.perf_counter(), share))
        cancel.set()

    def watch(event):
        if isinstance(event, Progress) and event.stage == "unsample" and event.step == 2 and event.window == 1:
            threading.Thread(target=cancel_mid_share).start()

    spec = light(tiny_spec, tmp_path / "frames", tmp_path / "out", steps=4)
    with pytest.raises(Cancelled):
        run_on_cluster([spec], "auto", 0, watch, cancel)
    stopped = time.perf_counter()
    [(cancelled_at, share)] = asked
    took = stopped - cancelled_at
    print(f"cancel took {took * 1000:.0f} ms; a worker's share of windows takes {share * 1000:.0f} ms")
    assert took < 0.5 * share, f"the cancel waited for the workers' shares: {took:.2f} s, a share {share:.2f} s"
    assert not frames_of(tmp_path / "out")
