"""The job's console: the driver's `[factory]` lines, progress bars, the events of every actor,
and the summary. Everything else the actors print (vLLM, Ray, torch) stays out of it: Ray keeps
each actor's output in its log files (the dashboard shows them), and at the end of a run on an
embedded cluster they are copied to RUN_DIR/logs/<actor>.out|err. `-v` (FACTORY_VERBOSE=1)
brings them back to the console and prints the resolved config.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from pathlib import Path


_lines = threading.Lock()


def line(text: str) -> None:
    """One whole line on stdout, never interleaved with another thread's (fault drills, the event
    tail and the loops all speak); on a terminal above the live progress bar (tqdm.write). In a
    log the bar is not live, and clearing it would only write blanks there."""
    from tqdm import tqdm

    with _lines:
        if sys.stderr.isatty():
            tqdm.write(text, file=sys.stdout)
        else:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()


class EventTail:
    """Prints, as `[factory] ...` lines, the events actors append to RUN_DIR/events.jsonl (their own
    console is not the driver's); the driver's own events it already printed are skipped."""

    def __init__(self, run_dir: Path, say, interval_s: float = 1.0):
        self.path, self.say, self.interval_s = run_dir / "events.jsonl", say, interval_s
        self._offset = self.path.stat().st_size if self.path.is_file() else 0
        self._stop = threading.Event()
        self._reading = threading.Lock()  # the last read at exit may race the thread's: print each row once
        self._thread = threading.Thread(target=self._run, name="event-tail", daemon=True)

    def __enter__(self) -> EventTail:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._print_new()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._print_new()

    def _print_new(self) -> None:
        with self._reading:
            self._print_rows()

    def _print_rows(self) -> None:
        if not self.path.is_file():
            return
        with self.path.open() as f:
            f.seek(self._offset)
            lines = f.readlines()
        for line in lines:
            if not line.endswith("\n"):  # a row still being written: read it next time
                break
            self._offset += len(line.encode())
            row = json.loads(line)
            if row.get("pid") != os.getpid():
                self.say(row["message"])


def collect_logs(run_dir: Path) -> Path | None:
    """Copy the actors' output of this embedded cluster into RUN_DIR/logs, named by actor
    (`factory.inference.0.err`); None when the cluster is not this process's own."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    if node is None or not node.is_head():
        return None
    source, target = Path(node.get_logs_dir_path()), run_dir / "logs"
    names = _actor_names()
    try:
        target.mkdir(exist_ok=True)
        for path in sorted(source.glob("worker-*")):
            if path.suffix in (".out", ".err") and path.stat().st_size:
                pid = path.stem.rsplit("-", 1)[-1]
                name = names.get(pid, path.stem)
                if (target / f"{name}{path.suffix}").exists():  # a replaced actor: same name, another process
                    name = f"{name}.pid{pid}"
                shutil.copyfile(path, target / f"{name}{path.suffix}")
    except OSError as exc:  # the logs are a copy: a run does not fail over them
        line(f"[factory] actors' output not copied to {target}: {exc}")
        return None
    return target


def _actor_names() -> dict[str, str]:
    """pid -> actor name (slashes as dots), for the actors this cluster has run, dead ones too. From
    the GCS's actor table: the state API (ray.util.state) needs the dashboard, which may be off."""
    try:
        from ray._private import state

        actors = state.actors().values()
    except Exception:  # names are a convenience here: files keep Ray's names without them
        return {}
    return {str(a["Pid"]): (a.get("Name") or a.get("ActorClassName", "actor")).replace("/", ".")
            for a in actors if a.get("Pid")}



def progress_bar(steps, **kwargs):
    """A tqdm bar: live on a terminal; in a log (a Ray job, a pipe) one line every 30 s, not one per step."""
    from tqdm import tqdm

    class Bar(tqdm):
        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):  # redrawn at the bar's own pace
            super().set_postfix(ordered_dict, refresh=refresh and self.live, **kwargs)

    live = sys.stderr.isatty()
    bar = Bar(steps, mininterval=0.1 if live else 30.0, **kwargs)
    bar.live = live
    return bar
