"""Flow figures rendered off the training thread, so a snapshot's images never hold the loop.

One matplotlib figure costs ~100 ms; a GPU step can be under a millisecond. The
training thread only hands a finished FlowSnapshot (plain Python lists) to a
queue; one daemon thread renders the `gradients`, `weights` and `update_ratio`
charts with matplotlib's object API (`Figure` + Agg canvas, never pyplot's
global state) into RGB arrays. The loop collects finished images with `ready()`
(no waiting) and logs them at the step it has reached; `flush()` waits for the
rest at the end of training.

Rendering competes with training only for CPU time and, briefly, the GIL: the
heavy parts (Agg rasterising, PNG-free array copies) are C code.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import numpy as np

from lab2.explain.plots import figure_to_array, flow_figures

MAX_PENDING = 8  # snapshots waiting to be rendered; beyond this a snapshot's images are skipped, not queued


@dataclass
class RenderedFlow:
    step: int  # the snapshot's optimizer step
    images: dict[str, np.ndarray]  # name -> RGB uint8 (H, W, 3)


class FigureWorker:
    """A background renderer of flow figures: `submit(snapshot)`, then `ready()` / `flush()` for the images."""

    def __init__(self, render=None):
        self._render = render or (
            lambda snapshot: {name: figure_to_array(fig) for name, fig in flow_figures(snapshot).items()}
        )
        self._jobs: queue.Queue = queue.Queue(maxsize=MAX_PENDING)
        self._done: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self.skipped = 0  # snapshots whose images were dropped because rendering fell behind
        self.errors: list[str] = []  # rendering failures, for the caller to report

    def submit(self, snapshot) -> bool:
        """Queue a FlowSnapshot for rendering without waiting; False when the queue is full (its images are skipped)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="lab2-figures", daemon=True)
            self._thread.start()
        try:
            self._jobs.put_nowait(snapshot)
        except queue.Full:
            self.skipped += 1
            return False
        return True

    def _serve(self) -> None:
        while True:
            snapshot = self._jobs.get()
            try:
                if snapshot is None:
                    return
                self._done.put(RenderedFlow(snapshot.step, self._render(snapshot)))
            except Exception as exc:  # a figure that fails to render must not end training; the caller reports it
                self.errors.append(
                    f"rendering the flow figures of step {snapshot.step} failed ({type(exc).__name__}: {exc})"
                )
            finally:
                self._jobs.task_done()

    def ready(self) -> list[RenderedFlow]:
        """Images finished so far, oldest first; never waits."""
        finished = []
        while True:
            try:
                finished.append(self._done.get_nowait())
            except queue.Empty:
                return finished

    def flush(self) -> list[RenderedFlow]:
        """Wait for every queued snapshot to be rendered and return what is finished."""
        if self._thread is not None:
            self._jobs.join()
        return self.ready()

    def close(self) -> None:
        """Stop the thread after the queued work (idempotent)."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None
