"""Structured logs in HOME/logs and ``neuronova logs``: rotated files in order, merged by
time, ``--since``, bounded follow mode, and the logs of a real running appliance."""

from __future__ import annotations

import json
import logging
import queue
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.cli import cli as neuronova_cli
from appliance.layout import HomeLayout
from appliance.supervise.log_reader import follow, mark_ends, read_logs
from appliance.supervise.logs import JsonFormatter
from tests.support.running import run_cli


def entry(minutes_ago: float, message: str, logger: str = "neuronova.web") -> str:
    stamp = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    fields = {"time": stamp.isoformat(timespec="milliseconds"), "severity": "INFO",
              "component": "app", "pid": 7, "logger": logger, "message": message}  # fmt: skip
    return json.dumps(fields)


def write_logs(home: Path, files: dict[str, list[str]]) -> Path:
    logs = HomeLayout(home).log_dir
    logs.mkdir(parents=True, exist_ok=True)
    for name, lines in files.items():
        (logs / name).write_text("".join(line + "\n" for line in lines))
    return logs


def messages(output: str) -> list[str]:
    return [line.split(": ", 1)[1] for line in output.splitlines() if ": " in line]


def test_rotated_files_come_oldest_first_and_components_merge_by_time(home, runner):
    write_logs(home, {
        "app.log.2": [entry(50, "a1")], "app.log.1": [entry(40, "a2")],
        "app.log": [entry(10, "a4")], "app2.log": [entry(30, "a3")],
        "worker.log": [entry(20, "w1")],
        "nginx-access.log": ['127.0.0.1 [29/Nov/2026:18:04:47 +0000] "GET / HTTP/1.1" 200'],
    })  # fmt: skip
    result = runner.invoke(neuronova_cli, ["logs", "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert messages(result.output) == ["a1", "a2", "a3", "w1", "a4"]  # access log not by default
    assert result.output.splitlines()[0].startswith("app          | ")
    only = runner.invoke(neuronova_cli, ["logs", "app", "--since", "35m", "--home", str(home)])
    assert messages(only.output) == ["a3", "a4"]


def test_a_traceback_is_shown_under_its_line(home, runner):
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("neuronova.worker", logging.ERROR, __file__, 1, "failed %s",
                                   ("x",), exc_info=__import__("sys").exc_info())  # fmt: skip
    line = JsonFormatter("worker").format(record)
    assert "\n" not in line and json.loads(line)["component"] == "worker"
    write_logs(home, {"worker.log": [line]})
    result = runner.invoke(neuronova_cli, ["logs", "worker", "--home", str(home)])
    shown = result.output.splitlines()
    assert "ERROR   neuronova.worker[" in shown[0] and shown[0].endswith("failed x")
    assert shown[-1] == "worker       | ValueError: boom"


def test_an_unknown_component_is_an_error_naming_the_components(home, runner):
    result = runner.invoke(neuronova_cli, ["logs", "web", "--home", str(home)])
    assert result.exit_code == 2
    assert "Error: Invalid value for '[COMPONENT]': 'web' is not one of 'supervisor', 'app'," in (
        result.output
    )


def _interruptible() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_follow_shows_new_lines_also_across_a_rotation_and_stops_when_told(home, tmp_path):
    logs = write_logs(home, {"receiver.log": [entry(5, "old")]})
    path = logs / "receiver.log"
    command = [sys.executable, "-m", "appliance", "logs", "-f", "receiver", "--home", str(home)]
    with open(tmp_path / "stderr", "w") as errors:
        # Ctrl-C reaches it as in a terminal even when the suite itself runs in the
        # background, where the shell makes children ignore SIGINT (and Python then
        # keeps ignoring it).
        follower = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True,
                                    preexec_fn=_interruptible)  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in follower.stdout],
                     daemon=True).start()  # fmt: skip

    def next_message() -> str:
        try:
            return messages(lines.get(timeout=60))[0]
        except queue.Empty:
            said = (tmp_path / "stderr").read_text()
            raise AssertionError(f"logs -f showed nothing more in 60 s (exit status "
                                 f"{follower.poll()}): {said}") from None  # fmt: skip

    try:
        assert next_message() == "old"
        with open(path, "a") as out:
            out.write(entry(0, "new") + "\n")
        assert next_message() == "new"
        path.rename(logs / "receiver.log.1")
        path.write_text(entry(0, "after rotation") + "\n")
        assert next_message() == "after rotation"
        follower.send_signal(signal.SIGINT)  # Ctrl-C
        assert follower.wait(timeout=30) == 0
    finally:
        follower.kill()
    assert lines.empty()


def test_history_and_follow_hand_over_at_one_mark_so_no_line_falls_between(home):
    """``logs -f`` prints the history, then follows: a line written while the history is
    read is shown once, by the follower (it was lost when the follower began at the end
    it found on its own first look, after the history)."""
    logs = write_logs(home, {"receiver.log": [entry(5, "old")]})
    ends = mark_ends(logs, ("receiver",))
    with open(logs / "receiver.log", "a") as out:
        out.write(entry(0, "written meanwhile") + "\n" + entry(0, "half a li"))
    history = [line.text for line in read_logs(logs, ("receiver",), None, ends)]
    assert [json.loads(text)["message"] for text in history] == ["old"]
    polls = iter([False, True])
    followed = [line.text for line in follow(logs, ("receiver",), lambda: next(polls), ends)]
    assert [json.loads(text)["message"] for text in followed] == ["written meanwhile"]


@pytest.mark.slow
def test_logs_of_a_running_appliance(appliance):
    app_log = appliance.settings.layout.log_dir / "app.log"
    first = json.loads(app_log.read_text().splitlines()[0])  # structured: JSON lines
    assert {"time", "severity", "component", "pid", "logger", "message"} <= first.keys()
    assert first["component"] == "app"
    shown = run_cli(appliance, "logs", "app", "--since", "1h")
    assert shown.returncode == 0, shown.stderr
    assert "INFO    neuronova.web[" in shown.stdout and "web app listening on" in shown.stdout
    supervisor = run_cli(appliance, "logs", "supervisor")
    assert "all services are running" in supervisor.stdout
    followed = run_cli(appliance, "logs", "-f", "--for", "1", timeout=30)  # ends by itself
    assert followed.returncode == 0
    assert "orthanc      | " in followed.stdout and "receiver     | " in followed.stdout
