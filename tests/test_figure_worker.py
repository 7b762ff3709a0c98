"""FlowReporter's figure worker renders off the training thread: images logged in step order, the step never waits
for them (a backlog skips images instead), a failure is reported once and training goes on, and close waits."""

import threading

import numpy as np
import torch
import torch.nn.functional as F

from lab2.explain.flow import MAX_PENDING, FlowReporter
from lab2.models import SimpleCNN


class FakeTracking:
    """The Tracking calls FlowReporter makes, recorded; `prepare_flow_images` runs on the rendering thread."""

    tracker_names = ["wandb"]

    def __init__(self):
        self.images, self.rendering_threads = [], []

    def log(self, values, step):
        pass

    def log_histograms(self, histograms, step):
        pass

    def prepare_flow_images(self, arrays, step):
        self.rendering_threads.append(threading.current_thread())
        return arrays

    def log_flow_images(self, images, step, reached_step):
        self.images.append((step, reached_step, images))


def _reporter(tmp_path, notes):
    torch.manual_seed(0)
    model = SimpleCNN()
    F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.arange(2)).backward()
    return FlowReporter(model, FakeTracking(), tmp_path / "flow.jsonl", histograms="off", printer=notes.append)


def _snapshot(reporter, step):
    reporter.before_step()
    reporter.after_step(step)


def test_renders_the_three_flow_charts_on_another_thread_in_step_order(tmp_path):
    reporter = _reporter(tmp_path, [])
    _snapshot(reporter, 5)
    _snapshot(reporter, 10)
    reporter.close(12)  # waits for both
    tracking = reporter.tracking
    assert [(step, reached) for step, reached, _ in tracking.images] == [(5, 12), (10, 12)]
    images = tracking.images[0][2]
    assert set(images) == {"gradients", "weights", "update_ratio"}
    image = images["gradients"]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.std() > 0  # drawn, not blank
    assert threading.main_thread() not in tracking.rendering_threads and len(tracking.rendering_threads) == 2


def test_a_backlog_skips_instead_of_waiting_and_a_failure_is_reported_once(tmp_path):
    notes = []
    reporter = _reporter(tmp_path, notes)
    release = threading.Event()

    def slow_or_failing(snapshot):
        release.wait()
        if snapshot.step == 2:
            raise ValueError("bad figure")
        return {"gradients": np.zeros((2, 2, 3), np.uint8)}

    reporter._render = slow_or_failing
    steps = range(1, MAX_PENDING + 4)
    for step in steps:  # none of these waits for the blocked renderer
        _snapshot(reporter, step)
        reporter.poll(step)
    assert reporter.tracking.images == []  # nothing finished, and asking did not wait
    assert reporter.skipped == len(steps) - MAX_PENDING
    skip_notes = [n for n in notes if n.startswith("note: flow images")]
    assert skip_notes == [
        f"note: flow images of step {MAX_PENDING + 1} skipped: rendering is slower than --flow_log_steps; "
        "raise it for images at every snapshot."
    ]
    release.set()
    reporter.rendering[0][1].result()  # the first set is finished: one poll logs it, at the step reached
    reporter.poll(20)
    assert [(step, reached) for step, reached, _ in reporter.tracking.images] == [(1, 20)]
    reporter.close(21)
    logged = [step for step, _, _ in reporter.tracking.images]
    assert logged == [1, *range(3, MAX_PENDING + 1)]  # in step order, without the failed step 2 and the skipped ones
    failures = [n for n in notes if n.startswith("warning:")]
    assert failures == [
        "warning: rendering the flow figures of step 2 failed (ValueError: bad figure); training goes on."
    ]
    reporter.close(21)  # a second close has nothing left to do
    assert len(reporter.tracking.images) == len(logged)
