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
