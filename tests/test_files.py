import pytest

from fashion_compare.files import atomic_path, read_json, write_json


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out" / "metrics.json"
    write_json(path, {"accuracy": 0.9})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("{half")
        raise RuntimeError("crash mid-write")
    assert read_json(path) == {"accuracy": 0.9}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_torch_files_are_byte_stable(tmp_path):
    """The same tensors give the same bytes whatever the file is called (DVC hashes the bytes)."""
    import torch

    from fashion_compare.files import save_torch

    tensors = {"images": torch.rand(50, 1, 28, 28), "labels": torch.arange(50), "config": {"model": "cnn"}}
    save_torch(tmp_path / "a.pt", tensors)
    save_torch(tmp_path / "b" / "other-name.pt", tensors)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b" / "other-name.pt").read_bytes()
    loaded = torch.load(tmp_path / "a.pt", weights_only=True)
    assert torch.equal(loaded["images"], tensors["images"]) and loaded["config"] == {"model": "cnn"}


def test_json_is_strict(tmp_path):
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        write_json(tmp_path / "m.json", {"loss": float("nan")})
    assert not (tmp_path / "m.json").exists()


def test_unwritable_output_is_one_line_naming_the_file(tmp_path):
    from fashion_compare.errors import PipelineError
    from fashion_compare.files import check_writable

    blocker = tmp_path / "metrics"  # a file where the output's folder should be (fails as root too)
    blocker.write_text("not a folder")
    with pytest.raises(PipelineError, match=f"{blocker}/m.json: cannot write"):
        write_json(blocker / "m.json", {"a": 2})
    with pytest.raises(PipelineError, match=f"{blocker}: not writable"):
        check_writable([blocker / "m.json"])
    assert blocker.read_text() == "not a folder"
    with pytest.raises(PipelineError, match="MiB free on its disk"):
        check_writable([tmp_path / "x.pt"], free_bytes_needed=2**62)
