"""Where training metrics go: a console progress line, WORKDIR/metrics.jsonl for scripts, and TensorBoard
event files under WORKDIR/tensorboard. Only process 0 writes, so N hosts produce one record per step."""
from __future__ import annotations

import json
import os
import socket
import time

import jax
from etils import epath


class MetricsWriter:
    def __init__(self, workdir, *, tensorboard: bool = True, quiet: bool = False):
        self.active = jax.process_index() == 0
        self.quiet = quiet
        self.path = epath.Path(workdir) / "metrics.jsonl"
        self._tb = None
        if self.active and tensorboard:
            self._tb = _tensorboard_writer(epath.Path(workdir) / "tensorboard")

    def print(self, text: str) -> None:
        if self.active and not self.quiet:
            print(text, flush=True)

    def resume_at(self, step: int) -> dict:
        """Drops records past the restored `step` (and any "final" record) so a resumed run logs each step
        once; returns the last step record kept (what the summary reports if no step runs). The file is
        rewritten under a temporary name and renamed, so a crash here loses nothing. TensorBoard event files
        are append-only: a SessionLog START event at step+1 makes TensorBoard drop the earlier runs' events
        from that step on, so it too shows each step once, with the value logged last."""
        if self._tb is not None:
            self._tb.session_start(step + 1)
        if not self.active or not self.path.exists():
            return {}
        kept, last = [], {}
        lines = self.path.read_text().splitlines()
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash mid-write
            if isinstance(record, dict) and not record.get("final") and record.get("step", step + 1) <= step:
                kept.append(line)
                if "loss" in record:  # eval records have their own lines; the summary reports a train record
                    last = record
        if len(kept) < len(lines):
            tmp = self.path.parent / f"{self.path.name}.tmp"
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(self.path)
        return last

    def write(self, record: dict) -> None:
        """Appends the record as one JSON line and logs its numeric fields as TensorBoard scalars."""
        if not self.active:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None and "step" in record:
            self._tb.scalars(int(record["step"]), {k: v for k, v in record.items()
                                                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)})

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class _EventFileWriter:
    """TensorBoard scalars framed by the `tensorboard` package's record writer: no TensorFlow, no torch.

    tensorboard's own EventFileWriter would import TensorFlow when it is installed (for tf.io.gfile), so the
    file is opened here and only the record framing and the protos come from the package. The package is
    optional (`pip install -e ".[tensorboard]"` brings it and the viewer); values are `simple_value`
    summaries, which TensorBoard's scalars dashboard plots.
    """

    def __init__(self, logdir):
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        self._session_log = event_pb2.SessionLog
        logdir.mkdir(parents=True, exist_ok=True)
        # TensorBoard reads files whose names contain "tfevents"
        self._file = (logdir / f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}").open("ab")
        self._records = RecordWriter(self._file)
        self._records.write(self._event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())

    def scalars(self, step: int, values: dict) -> None:
        summary = self._summary(value=[self._summary.Value(tag=name, simple_value=float(value))
                                       for name, value in values.items()])
        self._records.write(self._event(wall_time=time.time(), step=int(step), summary=summary).SerializeToString())
        self._file.flush()

    def session_start(self, step: int) -> None:
        """Marks a (re)start at `step`: readers purge events of any step >= `step` written before this one."""
        log = self._session_log(status=self._session_log.START)
        self._records.write(self._event(wall_time=time.time(), step=int(step), session_log=log).SerializeToString())
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _tensorboard_writer(logdir):
    try:
        return _EventFileWriter(logdir)
    except ImportError:
        print('TensorBoard event files are off: the tensorboard package is not installed (pip install -e '
              '".[tensorboard]", or set --config.checkpoint.tensorboard=False); metrics.jsonl is still written',
              flush=True)
        return None
