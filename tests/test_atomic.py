"""atomic_file: a write that fails leaves the old file as it was and no temporary file behind."""

import pytest

from t2ifast._atomic import atomic_file


@pytest.mark.parametrize("durable", [False, True])
def test_a_failed_write_keeps_the_old_file_and_a_good_one_replaces_it(tmp_path, durable):
    path = tmp_path / "deep" / "report.json"
    with atomic_file(path, durable=durable) as temporary:
        temporary.write_text("first")
    with pytest.raises(RuntimeError, match="killed"), atomic_file(path, durable=durable) as temporary:
        temporary.write_text("half of the sec")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "first" and [p.name for p in path.parent.iterdir()] == ["report.json"]
    with atomic_file(path, durable=durable) as temporary:
        temporary.write_text("second")
    assert path.read_text() == "second" and path.stat().st_mode & 0o044  # readable by others, unlike mkstemp's
