import json

import h5py
import numpy as np
import pytest
import zarr
from zarr.storage import ZipStore

from conftest import run_cli
from robopolicy.data.importers import import_diffusion_policy, import_robomimic
from robopolicy.data.store import DemoStore
from robopolicy.errors import ImportFormatError

ENV_ARGS = {"env_name": "Lift", "type": 1, "env_kwargs": {"robots": ["Panda"], "control_freq": 20,
                                                          "camera_names": ["agentview"]}}


def _robomimic_file(path, rng):
    demos = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(ENV_ARGS)
        for n, T in ((0, 7), (1, 12), (10, 5), (2, 9)):  # demo_10 sorts after demo_2, as in robomimic
            g = data.create_group(f"demo_{n}")
            d = {"actions": rng.uniform(-1, 1, (T, 7)), "rewards": rng.uniform(size=T), "dones": np.eye(1, T, T - 1)[0],
                 "states": rng.normal(size=(T, 32)),
                 "obs/agentview_image": rng.integers(0, 256, (T, 12, 12, 3), dtype=np.uint8),
                 "obs/robot0_eef_pos": rng.normal(size=(T, 3)).astype(np.float32),
                 "obs/object": rng.normal(size=(T, 10))}
            for k, v in d.items():
                g.create_dataset(k, data=v, compression="gzip" if "image" in k else None)
            g.attrs["num_samples"] = T
            demos[n] = d
        f.create_dataset("mask/train", data=np.array([b"demo_0", b"demo_10", b"demo_2"]))
        f.create_dataset("mask/valid", data=np.array([b"demo_1"]))
    return demos


def test_robomimic_import_is_exact(tmp_path, rng):
    demos = _robomimic_file(tmp_path / "lift.hdf5", rng)
    result = run_cli("import", "robomimic", str(tmp_path / "lift.hdf5"), "--out", str(tmp_path / "lift.zarr"))
    assert result.returncode == 0, result.stderr
    assert "episodes  4" in result.stdout
    store = DemoStore.open(tmp_path / "lift.zarr")
    order = [0, 1, 2, 10]
    assert list(store.episode_lengths) == [len(demos[n]["actions"]) for n in order]
    names = {"actions": "action", "rewards": "reward", "dones": "done", "states": "sim_state"}
    for i, n in enumerate(order):
        ep = store.episode(i)
        for k, v in demos[n].items():
            got = ep[names.get(k, k.removeprefix("obs/"))]
            assert got.dtype == v.dtype and got.tobytes() == np.ascontiguousarray(v).tobytes(), (n, k)
    assert store.env_spec == {"type": "robomimic", "env_args": ENV_ARGS}
    assert store.fps == 20
    assert store.extra["filter_keys"] == {"train": [0, 2, 3], "valid": [1]}
    assert store.extra["source"]["episode_names"] == ["demo_0", "demo_1", "demo_2", "demo_10"]


def _dp_arrays(rng):
    ends = np.array([6, 15, 19])
    n = ends[-1]
    return ends, {"img": (rng.uniform(0, 255, (n, 10, 10, 3))).astype(np.float32),  # Push-T keeps float images
                  "keypoint": rng.normal(size=(n, 9, 2)).astype(np.float32),
                  "state": rng.normal(size=(n, 5)), "action": rng.normal(size=(n, 2)).astype(np.float32),
                  "n_contacts": rng.integers(0, 3, (n, 1))}


def _write_dp(store_or_path, ends, arrays):
    """Diffusion Policy's ReplayBuffer layout in zarr format 2, as zarr 2 wrote it."""
    import numcodecs

    root = zarr.open_group(store_or_path, mode="w", zarr_format=2)
    for k, v in arrays.items():
        a = root.create_array(f"data/{k}", shape=v.shape, dtype=v.dtype, chunks=(4,) + v.shape[1:],
                              compressors=numcodecs.Blosc("zstd", 5))
        a[:] = v
    root.create_array("meta/episode_ends", shape=ends.shape, dtype=np.int64, chunks=ends.shape)[:] = ends


@pytest.mark.parametrize("as_zip", [False, True])
def test_dp_import_is_exact(tmp_path, rng, as_zip):
    ends, arrays = _dp_arrays(rng)
    src = tmp_path / ("pusht.zarr.zip" if as_zip else "pusht.zarr")
    if as_zip:
        zs = ZipStore(src, mode="w")
        _write_dp(zs, ends, arrays)
        zs.close()
    else:
        _write_dp(str(src), ends, arrays)
    store = import_diffusion_policy(src, tmp_path / "out.zarr", progress=False)
    assert list(store.episode_ends) == list(ends)
    assert store.extra["source"]["zarr_format"] == 2
    for k, v in arrays.items():
        got = store.read(k, 0, store.n_frames)
        assert got.dtype == v.dtype and got.tobytes() == v.tobytes(), k
    # the DP store itself is readable in place, too
    assert run_cli("info", str(src)).returncode == 0


def test_import_errors_are_clear_and_keep_sources(tmp_path, rng):
    (tmp_path / "x.hdf5").write_bytes(b"not hdf5")
    result = run_cli("import", "robomimic", str(tmp_path / "x.hdf5"), "--out", str(tmp_path / "o.zarr"))
    assert result.returncode == 2 and "not a readable HDF5" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "x.hdf5").read_bytes() == b"not hdf5"
    with h5py.File(tmp_path / "empty.hdf5", "w") as f:
        f.create_group("stuff")
    with pytest.raises(ImportFormatError, match="not a robomimic file"):
        import_robomimic(tmp_path / "empty.hdf5", tmp_path / "o.zarr", progress=False)
    result = run_cli("import", "dp", str(tmp_path / "nothing.zarr"), "--out", str(tmp_path / "o2.zarr"))
    assert result.returncode == 2 and "no such demo store" in result.stderr
    _robomimic_file(tmp_path / "ok.hdf5", rng)
    DemoStore.create(tmp_path / "taken.zarr").close()
    result = run_cli("import", "robomimic", str(tmp_path / "ok.hdf5"), "--out", str(tmp_path / "taken.zarr"))
    assert result.returncode == 2 and "already exists" in result.stderr
