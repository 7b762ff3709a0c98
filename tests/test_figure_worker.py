"""The flow-figure worker renders off the calling thread, never waits in submit/ready, and survives failures."""

import threading

import numpy as np

from lab2.explain.figure_worker import MAX_PENDING, FigureWorker
from lab2.explain.flow import FlowSnapshot


def _snapshot(step):
    return FlowSnapshot(step, ["conv1", "fc2"], [1e-3, 2e-3], [1e-2, 2e-2], [0.1, 0.2], [0.5, 0.6], [1e-3, 1e-4])


def test_renders_the_three_flow_charts_on_another_thread():
    worker = FigureWorker()
    rendering_threads = []
    render = worker._render
    worker._render = lambda s: (rendering_threads.append(threading.current_thread()), render(s))[1]
    assert worker.submit(_snapshot(5)) and worker.submit(_snapshot(10))
    finished = worker.flush()
    worker.close()
    assert [r.step for r in finished] == [5, 10]
    assert set(finished[0].images) == {"gradients", "weights", "update_ratio"}
    image = finished[0].images["gradients"]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.std() > 0  # drawn, not blank
    assert threading.main_thread() not in rendering_threads and len(rendering_threads) == 2


def test_a_full_queue_skips_instead_of_waiting_and_failures_are_kept():
    release = threading.Event()

    def slow_or_failing(snapshot):
        release.wait()
        if snapshot.step == 2:
            raise ValueError("bad figure")
        return {"gradients": np.zeros((2, 2, 3), np.uint8)}

    worker = FigureWorker(slow_or_failing)
    accepted = [worker.submit(_snapshot(step)) for step in range(1, MAX_PENDING + 4)]
    assert worker.ready() == []  # nothing finished, and asking does not wait
    # The first is being rendered, MAX_PENDING wait in the queue, the rest are skipped.
    assert accepted.count(False) == worker.skipped >= 1
    release.set()
    finished = worker.flush()
    worker.close()
    assert 2 not in [r.step for r in finished] and len(finished) == accepted.count(True) - 1
    assert worker.errors == ["rendering the flow figures of step 2 failed (ValueError: bad figure)"]
