"""The engine store: key digests, validation on load, atomic builds, one build across processes."""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import multiprocessing
import re
import shutil
import time
from pathlib import Path

import pytest

from heygem_ray.engines import ARTIFACT, SIDECAR, BatchProfile, EngineKey, EngineStore
from heygem_ray.errors import EngineError

KEY = EngineKey(
    pack="warp",
    weights_hash="ab" * 32,
    stage="render",
    precision="fp16",
    profile=BatchProfile(1, 32, 64),
    backend="tensorrt",
    backend_version="10.9.0.34",
    arch="sm_90",
)
PAYLOAD = b"engine bytes " * 100


def _writer(payload: bytes = PAYLOAD):
    calls: list[Path] = []

    def build(tmp: Path) -> None:
        calls.append(tmp)
        tmp.write_bytes(payload)

    return build, calls


# -- keys ---------------------------------------------------------------------------------------


def test_digest_is_stable_and_follows_every_field() -> None:
    same = EngineKey(**{f.name: getattr(KEY, f.name) for f in dataclasses.fields(KEY)})
    assert same.digest() == KEY.digest() and same == KEY and hash(same) == hash(KEY)
    assert re.fullmatch(r"[0-9a-f]{64}", KEY.digest())
    # A pinned value, written down once: the digest must not drift between Python runs or
    # versions, or every engine store in use would be rebuilt.
    assert KEY.digest() == "6961a90d2bef487a414ff11e944290464b5de14b1c284100abc7c1e27703c01b"

    variants = {
        "weights_hash": "cd" * 32,
        "precision": "fp32",
        "profile": BatchProfile(1, 16, 64),
        "backend_version": "11.0.0.1",
        "arch": "sm_89",
        "stage": "motion",
        "pack": "wav2lip",
        "backend": "onnxruntime",
        "source": "ef" * 32,
    }
    digests = {KEY.digest()}
    for field, value in variants.items():
        changed = dataclasses.replace(KEY, **{field: value})
        assert changed.digest() != KEY.digest(), field
        digests.add(changed.digest())
    assert len(digests) == len(variants) + 1
    assert dataclasses.replace(KEY, profile=None).digest() != KEY.digest()


def test_dirname_is_readable() -> None:
    assert KEY.dirname() == f"warp/render/tensorrt-10.9.0.34-sm_90-fp16-b1-32-64-{KEY.digest()[:8]}"
    onnx = dataclasses.replace(KEY, backend="onnxruntime", profile=None, arch="any",
                               backend_version="opset17-torch2.13.0+cpu")
    assert onnx.dirname() == f"warp/render/onnxruntime-opset17-torch2.13.0_cpu-any-fp16-{onnx.digest()[:8]}"


@pytest.mark.parametrize(("field", "value"), [
    ("precision", "int4"), ("arch", "9.0"), ("stage", "decode"), ("backend", "openvino"),
])
def test_key_rejects_unknown_values(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=field if field != "backend" else "engine backend"):
        dataclasses.replace(KEY, **{field: value})


def test_profile_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="min <= opt <= max"):
        BatchProfile(1, 64, 32)


# -- build, reuse, validation -------------------------------------------------------------------


def test_builds_once_then_reuses(tmp_path: Path) -> None:
    store = EngineStore(tmp_path)
    build, calls = _writer()

    path = store.get_or_build(KEY, build)
    again = store.get_or_build(KEY, build)

    assert path == again == tmp_path / KEY.dirname() / ARTIFACT["tensorrt"]
    assert len(calls) == 1 and calls[0].parent == path.parent and calls[0] != path  # built under a temp name
    assert path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in path.parent.iterdir()) == [".lock", "engine.plan", "meta.json"]
    meta = json.loads((path.parent / SIDECAR).read_text())
    assert EngineKey.from_json(meta["key"]) == KEY
    assert meta["size"] == len(PAYLOAD)
    assert meta["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    assert meta["host"] and meta["built_at"].endswith("+00:00") and meta["build_seconds"] >= 0
    assert {"python", "torch", "onnx", "onnxruntime"} <= meta["tools"].keys()
    assert store.problem(KEY) is None


def test_truncated_artifact_is_detected_and_rebuilt(tmp_path: Path) -> None:
    store = EngineStore(tmp_path)
    build, calls = _writer()
    path = store.get_or_build(KEY, build)
    path.write_bytes(PAYLOAD[: len(PAYLOAD) // 2])

    assert "truncated" in (store.problem(KEY) or "")
    with pytest.raises(EngineError, match=r"engine store entry warp/render/.*truncated"):
        store.get_or_build(KEY, build, rebuild=False)
    assert len(calls) == 1

    assert store.get_or_build(KEY, build) == path
    assert len(calls) == 2 and path.read_bytes() == PAYLOAD


def test_same_size_corruption_is_caught_by_the_hash(tmp_path: Path) -> None:
    store = EngineStore(tmp_path)
    build, calls = _writer()
    path = store.get_or_build(KEY, build)
    path.write_bytes(b"X" + PAYLOAD[1:])
    assert "sha256" in (store.problem(KEY) or "")
    store.get_or_build(KEY, build)
    assert len(calls) == 2 and path.read_bytes() == PAYLOAD


def test_sidecar_from_another_arch_is_not_loaded(tmp_path: Path) -> None:
    store = EngineStore(tmp_path)
    ampere = dataclasses.replace(KEY, arch="sm_80")
    build, calls = _writer(b"built for sm_80")
    store.get_or_build(ampere, build)
    # Someone copies the Ampere entry to where the Hopper entry belongs.
    shutil.copytree(store.entry_dir(ampere), store.entry_dir(KEY))

    assert "arch=sm_80" in (store.problem(KEY) or "")
    with pytest.raises(EngineError, match=r"built for another key \(arch=sm_80\)"):
        store.get_or_build(KEY, build, rebuild=False)
    hopper_build, hopper_calls = _writer(b"built for sm_90")
    path = store.get_or_build(KEY, hopper_build)
    assert len(hopper_calls) == 1 and path.read_bytes() == b"built for sm_90"
    assert store.problem(ampere) is None  # the original entry is untouched


def test_missing_entry_without_rebuild_says_so(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="not built yet") as err:
        EngineStore(tmp_path).get_or_build(KEY, _writer()[0], rebuild=False)
    assert err.value.kind == "engine_missing"


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    store = EngineStore(tmp_path)

    def build(tmp: Path) -> None:
        tmp.write_bytes(b"half an engine")
        raise EngineError("builder ran out of memory")

    with pytest.raises(EngineError, match="out of memory"):
        store.get_or_build(KEY, build)
    assert sorted(p.name for p in store.entry_dir(KEY).iterdir()) == [".lock"]
    assert store.problem(KEY) == "not built yet"


def test_lock_timeout_names_the_holder(tmp_path: Path) -> None:
    store = EngineStore(tmp_path, lock_timeout_s=0.3)
    lock = store.entry_dir(KEY) / ".lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as held:
        held.write("pid 4242 on builder-host\n")
        held.flush()
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(EngineError, match=r"still being built after .* by pid 4242 on builder-host \(the lock .* is let go when its process ends"):
            store.get_or_build(KEY, _writer()[0])


def test_what_a_killed_build_left_in_an_entry_goes_when_it_is_next_built(tmp_path: Path) -> None:
    """A build killed midway (out of memory, a preempted node) leaves its temporaries in the
    entry: the artifact and sidecar under temporary names, an export's working folder, a
    quantization's (the fp32 graph's copy: gigabytes for MuseTalk). The next build of the
    entry removes them under its lock, where they stayed for good, night after night."""
    store = EngineStore(tmp_path)
    entry = store.entry_dir(KEY)
    (entry / ".export-ct37t2kr").mkdir(parents=True)
    (entry / ".export-ct37t2kr" / "stage.onnx").write_bytes(b"graph")
    (entry / ".quantize-x1y2").mkdir()
    (entry / ".quantize-x1y2" / "fp32.onnx").write_bytes(b"graph")
    (entry / ".engine.plan.4242.0123abcd.tmp").write_bytes(b"half a plan")
    (entry / ".meta.json.4242.0123abcd.tmp").write_bytes(b"{")
    (entry / "notes.txt").write_text("someone's")  # (not the store's: left)
    store.get_or_build(KEY, _writer()[0])
    assert sorted(p.name for p in entry.iterdir()) == [".lock", ARTIFACT[KEY.backend], "meta.json", "notes.txt"]


def test_list_passes_over_a_sidecar_whose_size_is_not_a_number(tmp_path: Path) -> None:
    store = EngineStore(tmp_path)
    store.get_or_build(KEY, _writer()[0])
    sidecar = store.entry_dir(KEY) / "meta.json"
    for size in (None, "1.2 MB"):
        sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "size": size}))
        assert store.list() == []  # not an entry (a traceback, before)


def test_list_shows_every_entry(tmp_path: Path) -> None:
    store = EngineStore(tmp_path)
    onnx = EngineKey("wav2lip", "ef" * 32, "motion", "fp32", None, "onnxruntime", "opset17", "any")
    store.get_or_build(KEY, _writer()[0])
    store.get_or_build(onnx, _writer(b"graph")[0])
    (tmp_path / "stray.txt").write_text("not an entry")

    rows = store.list()

    assert [(r.pack, r.stage, r.precision, r.backend, r.arch, r.profile, r.size, r.ok) for r in rows] == [
        ("warp", "render", "fp16", "tensorrt", "sm_90", "b1-32-64", len(PAYLOAD), True),
        ("wav2lip", "motion", "fp32", "onnxruntime", "any", "", 5, True),
    ]
    assert all(r.built_at and r.path.is_file() for r in rows)
    rows[0].path.write_bytes(b"short")
    assert [r.ok for r in store.list()] == [False, True]


# -- two processes ------------------------------------------------------------------------------


def _slow_build(tmp: Path, counter: Path) -> None:
    with open(counter, "a") as f:
        f.write("built\n")
    time.sleep(1.0)  # long enough for the other process to arrive and wait on the lock
    tmp.write_bytes(PAYLOAD)


def _ask(root: str, counter: str, start, results) -> None:
    start.wait(timeout=30)
    path = EngineStore(root).get_or_build(KEY, lambda tmp: _slow_build(tmp, Path(counter)))
    results.put(str(path))


def test_two_processes_build_a_missing_entry_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    counter = tmp_path / "builds.txt"
    procs = [ctx.Process(target=_ask, args=(str(tmp_path / "store"), str(counter), start, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    paths = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0

    assert counter.read_text() == "built\n"
    assert paths[0] == paths[1] == str(EngineStore(tmp_path / "store").artifact_path(KEY))
    assert Path(paths[0]).read_bytes() == PAYLOAD


# -- what a stage's key hashes --------------------------------------------------------------------


def test_stage_digest_follows_weights_and_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import heygem_ray.models.warp as warp_module
    from heygem_ray.backends import artifacts
    from heygem_ray.models.warp import WarpRender

    render = WarpRender()
    first = artifacts.stage_digest(render)
    assert artifacts.stage_digest(WarpRender()) == first  # same weights, same code
    with torch.no_grad():
        render.pull.mul_(1.01)
    assert artifacts.stage_digest(render) != first

    edited = tmp_path / "warp.py"
    edited.write_text(Path(warp_module.__file__).read_text() + "\n# edited\n")
    monkeypatch.setattr(artifacts.inspect, "getsourcefile", lambda module: str(edited))
    assert artifacts.stage_digest(WarpRender()) != first
