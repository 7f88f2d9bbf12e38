import numpy as np
import pytest
import zarr

from conftest import make_episode, run_cli, tree_snapshot
from robopolicy.data.store import DemoStore, Field, chunk_rows
from robopolicy.errors import SchemaError, StoreError


def _store(tmp_path, n=3, **kw):
    store = DemoStore.create(tmp_path / "s.zarr", fps=20, env_spec={"id": "reach-v3", "kwargs": {"seed": 1}}, **kw)
    for i in range(n):
        store.append_episode(make_episode(i))
    return store


def test_roundtrip_and_metadata(tmp_path):
    with _store(tmp_path, n=4):
        pass
    store = DemoStore.open(tmp_path / "s.zarr")
    assert store.n_episodes == 4
    assert list(store.episode_lengths) == [len(make_episode(i)["action"]) for i in range(4)]
    assert store.keys == ["action", "image", "state"]
    assert store.schema["image"] == Field((16, 16, 3), np.dtype("uint8")) and store.schema["image"].is_image
    assert store.fps == 20 and store.env_spec == {"id": "reach-v3", "kwargs": {"seed": 1}}
    for i in range(4):
        ep, ref = store.episode(i), make_episode(i)
        for k in ref:
            assert ep[k].dtype == ref[k].dtype and np.array_equal(ep[k], ref[k])
    # DP layout on disk: concatenated data/<key>, meta/episode_ends
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert list(group["meta/episode_ends"][:]) == list(np.cumsum(store.episode_lengths))
    assert group["data/image"].shape[0] == store.n_frames
    # images compressed with blosc/zstd and chunked along time
    codec = group["data/image"].compressors[0]
    assert codec.cname.value == "zstd" and group["data/image"].chunks[1:] == (16, 16, 3)


def test_chunk_rows_target_a_few_images():
    assert chunk_rows(Field((96, 96, 3), np.dtype("uint8"))) == 8
    assert chunk_rows(Field((224, 224, 3), np.dtype("uint8"))) == 1
    assert chunk_rows(Field((7,), np.dtype("float32"))) == 4096


def test_schema_can_be_given_up_front(tmp_path):
    schema = {k: Field(v.shape[1:], v.dtype) for k, v in make_episode(0).items()}
    with DemoStore.create(tmp_path / "s.zarr", schema=schema) as store:
        assert store.keys == sorted(schema) and store.n_episodes == 0
        with pytest.raises(SchemaError):
            store.append_episode({k: v.astype(np.float64) for k, v in make_episode(1).items()})


@pytest.mark.parametrize("change, words", [
    (lambda e: e.pop("state"), "missing ['state']"),
    (lambda e: e.update(extra=np.zeros((len(e["action"]), 1), np.float32)), "unexpected ['extra']"),
    (lambda e: e.update(action=e["action"][:, :2]), "shape"),
    (lambda e: e.update(image=e["image"].astype(np.float32)), "dtype float32"),
    (lambda e: e.update(state=e["state"][:-1]), "same number of frames"),
    (lambda e: e.update({k: v[:0] for k, v in e.items()}), "same number of frames"),
])
def test_schema_mismatch_fails_clearly_and_changes_nothing(tmp_path, change, words):
    store = _store(tmp_path, n=2)
    before = tree_snapshot(store.path)
    episode = make_episode(5)
    change(episode)
    with pytest.raises(SchemaError, match="nothing was written|Nothing was written") as err:
        store.append_episode(episode)
    assert words in str(err.value)
    assert tree_snapshot(store.path) == before
    assert store.n_episodes == 2
    store.append_episode(make_episode(2))  # the store still takes good episodes
    store.close()
    assert DemoStore.open(store.path).n_episodes == 3


def test_create_refuses_existing_path(tmp_path):
    _store(tmp_path).close()
    before = tree_snapshot(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="already exists"):
        DemoStore.create(tmp_path / "s.zarr")
    assert tree_snapshot(tmp_path / "s.zarr") == before


def test_one_writer_at_a_time_and_read_only_refuses_appends(tmp_path):
    store = _store(tmp_path)
    with pytest.raises(StoreError, match="another process is writing"):
        DemoStore.open(store.path, mode="a")
    store.close()
    reader = DemoStore.open(store.path)
    with pytest.raises(StoreError, match="read-only"):
        reader.append_episode(make_episode(9))


def _assert_clean_cli_error(result, *words):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "robopolicy: error:" in result.stderr
    for w in words:
        assert w in result.stderr


def test_bad_paths_give_one_clear_error(tmp_path):
    _assert_clean_cli_error(run_cli("info", str(tmp_path / "nope.zarr")), "no such demo store")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("keep me")
    _assert_clean_cli_error(run_cli("info", str(tmp_path / "folder")), "not a zarr store")
    assert (tmp_path / "folder" / "notes.txt").read_text() == "keep me"
    (tmp_path / "file.txt").write_text("x")
    _assert_clean_cli_error(run_cli("info", str(tmp_path / "file.txt")), "is a file")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").create_array("x", shape=(3,), dtype="f4")
    _assert_clean_cli_error(run_cli("info", str(tmp_path / "other.zarr")), "not a demo store")
    with pytest.raises(StoreError, match="no such demo store"):
        DemoStore.open(tmp_path / "nope.zarr")


def _chunk_files(store_path, key):
    return sorted(p for p in (store_path / "data" / key / "c").rglob("*") if p.is_file())


def test_truncated_or_corrupt_chunk_is_reported_not_deleted(tmp_path):
    _store(tmp_path, n=3).close()
    path = tmp_path / "s.zarr"
    action_chunk = _chunk_files(path, "action")[0]
    original = action_chunk.read_bytes()
    action_chunk.write_bytes(original[: len(original) // 2])  # truncated
    result = run_cli("info", str(path))
    _assert_clean_cli_error(result, "data/action", "cannot be decoded")
    assert action_chunk.read_bytes() == original[: len(original) // 2]  # nothing deleted or "repaired"
    with pytest.raises(StoreError, match="data/action frames"):
        DemoStore.open(path).episode(0)
    action_chunk.write_bytes(original)

    image_chunk = _chunk_files(path, "image")[0]
    image_chunk.write_bytes(b"\x00garbage" * 40)  # corrupt, same size class
    assert run_cli("info", str(path)).returncode == 0  # summary alone does not read images
    result = run_cli("info", "--check", str(path))
    _assert_clean_cli_error(result, "damaged chunk", "data/image")
    assert image_chunk.exists()


def test_missing_chunk_is_reported_by_check(tmp_path):
    _store(tmp_path, n=3).close()
    _chunk_files(tmp_path / "s.zarr", "state")[0].unlink()
    problems = DemoStore.open(tmp_path / "s.zarr").check()
    assert any("data/state" in p and "missing" in p for p in problems)


def test_damaged_metadata_is_one_clear_error(tmp_path):
    _store(tmp_path).close()
    (tmp_path / "s.zarr" / "zarr.json").write_text("{ not json")
    _assert_clean_cli_error(run_cli("info", str(tmp_path / "s.zarr")), "metadata cannot be read")


def test_all_zero_episodes_are_not_reported_as_damage(tmp_path):
    with DemoStore.create(tmp_path / "z.zarr") as store:
        store.append_episode({"image": np.zeros((50, 96, 96, 3), np.uint8), "action": np.zeros((50, 7), np.float32)})
        assert store.check() == []


def test_console_script_is_installed():
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    script = shutil.which("robopolicy", path=str(Path(sys.executable).parent))
    assert script, "the robopolicy console script is not installed next to this python"
    result = subprocess.run([script, "info", "/nonexistent.zarr"], capture_output=True, text=True)
    assert result.returncode == 2 and "no such demo store" in result.stderr


def test_a_first_append_killed_while_creating_arrays_recovers(tmp_path):
    """The schema is written before the arrays; a writer killed between two array creations leaves a store
    that opens empty and takes the episode on the next append."""
    from robopolicy.data.store import _create_arrays

    episode = make_episode(0)
    schema = {k: Field(v.shape[1:], v.dtype) for k, v in episode.items()}
    with DemoStore.create(tmp_path / "s.zarr") as store:
        store._write_meta(schema={k: f.to_json() for k, f in schema.items()})
        _create_arrays(store._group, {"image": schema["image"]})  # ... and killed here
    store = DemoStore.open(tmp_path / "s.zarr", mode="a")
    assert store.n_episodes == 0 and store.keys == ["image"]
    store.append_episode(episode)
    store.close()
    again = DemoStore.open(tmp_path / "s.zarr").episode(0)
    assert all(np.array_equal(again[k], episode[k]) for k in episode)
