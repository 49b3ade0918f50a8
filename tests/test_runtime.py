"""Runtime.exclusive: two jobs that would fill the same cache take turns."""

import threading
import time

import torch

from t2ifast.training.runtime import Runtime


def test_exclusive_makes_a_second_job_wait_until_the_first_leaves(tmp_path, capsys):
    lock = tmp_path / "cache.lock"
    events, first_inside = [], threading.Event()

    def first_job():
        with Runtime(torch.device("cpu")).exclusive(lock, "first waits"):
            first_inside.set()
            time.sleep(0.3)
            events.append("first leaves")

    thread = threading.Thread(target=first_job)
    thread.start()
    first_inside.wait()
    # another open file description of the same path: flock treats it as another job
    with Runtime(torch.device("cpu")).exclusive(lock, "second waits for the first"):
        events.append("second enters")
    thread.join()
    assert events == ["first leaves", "second enters"]
    assert "second waits for the first" in capsys.readouterr().out
