"""Where a flow snapshot goes: flow.jsonl, tracker scalars and histograms, health warnings, and images
rendered off the training thread. The loop needs four calls (main process only):

    reporter.before_step()            # at a snapshot step, after unscaling, before optimizer.step()
    reporter.after_step(step)         # right after optimizer.step()
    reporter.poll(step)               # every step: logs at most one finished set of images, never waits
    reporter.close(step)              # at the end: waits for the last images and logs them

Images are logged at the step the loop has reached (W&B drops a step lower than
one it has seen) with their snapshot's step in the caption; TensorBoard and
MLflow get the snapshot's own step. One set per step keeps each set on its own
W&B step; only sets still rendering at `close` share the final step.
"""

from __future__ import annotations

from collections import deque

from lab2.explain.figure_worker import FigureWorker
from lab2.explain.flow import STATISTICS, FlowCollector, FlowHealth, FlowSnapshot
from lab2.explain.plots import figure_to_array, flow_figures
from lab2.state.files import append_jsonl


class FlowReporter:
    """Owns the collector, the health checks and the figure worker of one run's main process."""

    def __init__(self, model, tracking, flow_file, histograms: str = "all", printer=print):
        self.collector = FlowCollector(model, histograms=histograms)
        self.health = FlowHealth()
        self.tracking, self.flow_file, self.printer = tracking, flow_file, printer
        self.worker: FigureWorker | None = None  # started at the first snapshot, once the trackers exist
        self._ready: deque = deque()
        self._reported_errors = 0

    @property
    def history(self) -> list[FlowSnapshot]:
        """Every snapshot of the run (a resumed run sets it from flow.jsonl), for the heatmaps."""
        return self.collector.history

    @history.setter
    def history(self, snapshots: list[FlowSnapshot]) -> None:
        self.collector.history = snapshots

    def matrix(self, statistic: str):
        """(layers, snapshots) values of one statistic over the whole history, for the heatmaps."""
        return self.collector.matrix(statistic)

    def _render(self, snapshot: FlowSnapshot) -> dict:
        """Runs on the worker thread: figures (object API, Agg) -> arrays -> each tracker's encoded images."""
        arrays = {name: figure_to_array(fig) for name, fig in flow_figures(snapshot).items()}
        return self.tracking.prepare_flow_images(arrays, snapshot.step)

    def before_step(self) -> None:
        self.collector.before_step()

    def after_step(self, step: int) -> FlowSnapshot:
        """Finish the snapshot, write it, log its scalars and histograms, warn, and hand it to the renderer."""
        snapshot = self.collector.after_step(step)
        append_jsonl(self.flow_file, snapshot.to_record())
        values = {
            f"flow/{stat}/{layer}": getattr(snapshot, stat)[i]
            for stat in STATISTICS
            for i, layer in enumerate(snapshot.layers)
        }
        self.tracking.log(values, step=step)
        self.tracking.log_histograms(snapshot.histograms, step=step)
        for message in self.health.check(snapshot):
            self.printer(message)
            self.tracking.log({"flow/warning": message}, step=step)
        # Images are only worth rendering for a tracker; the final figures on disk are drawn at the end anyway.
        if self.worker is None and self.tracking.tracker_names:
            self.worker = FigureWorker(self._render)
        if self.worker is not None and not self.worker.submit(snapshot) and self.worker.skipped == 1:
            self.printer(
                f"note: flow images of step {step} skipped: rendering is slower than --flow_log_steps; "
                "raise it for images at every snapshot."
            )
        return snapshot

    def poll(self, reached_step: int) -> None:
        """Log at most one finished set of images at `reached_step`; never waits (call every step)."""
        if self.worker is None:
            return
        self._ready.extend(self.worker.ready())
        if self._ready:
            rendered = self._ready.popleft()
            self.tracking.log_flow_images(rendered.images, rendered.step, reached_step)
        self._report_errors()

    def close(self, reached_step: int) -> None:
        """Wait for the images still rendering, log them at `reached_step`, stop the worker."""
        if self.worker is None:
            return
        self._ready.extend(self.worker.flush())
        self.worker.close()
        while self._ready:
            rendered = self._ready.popleft()
            self.tracking.log_flow_images(rendered.images, rendered.step, reached_step)
        self._report_errors()

    def _report_errors(self) -> None:
        for message in self.worker.errors[self._reported_errors :]:
            self.printer(f"warning: {message}; training goes on.")
        self._reported_errors = len(self.worker.errors)
