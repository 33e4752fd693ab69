"""Stopping the embedded stack (part of `cluster.stack.Stack`): only the processes this stack
started, found by its state dir, Ray temp dir and HAProxy dir, never another stack's."""

from __future__ import annotations

import os
import re
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import psutil

RAY_COMMAND = re.compile(r"(^|[/\s])ray(::|\.|/)")  # `ray::Agent`, `-m ray.x`, `.../ray/...`


class StackStop:
    """The `Stack` methods that find and stop its processes (mixed into `cluster.stack.Stack`)."""

    def _ray_processes(self) -> list[psutil.Process]:
        """Every process of this stack's Ray head: by its temp dir or HAProxy dir, or a Ray command run in the state dir."""
        # The temp dir as a whole path component (not a suffix of another stack's path).
        # HAProxy (the Serve ingress) runs with its config under this stack's haproxy_dir.
        dirs = "|".join(re.escape(str(d)) for d in (self.ray_temp_dir, self.haproxy_dir))
        marker = re.compile(r"(^|[=\s,])(" + dirs + r")(/|$|[\s,])")
        found = []
        for proc in psutil.process_iter(["cmdline", "cwd"]):
            try:
                cmdline = proc.info["cmdline"] or []
                # Ray's agents retitle themselves (`ray::DashboardAgent`) and its client server
                # names no temp dir: a Ray process is ours when it runs in this stack's state dir.
                in_root = proc.info["cwd"] == str(self.root) and RAY_COMMAND.search(" ".join(cmdline))
                if in_root or any(marker.search(part) for part in cmdline):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found

    @staticmethod
    def _terminate(procs: list[psutil.Process], timeout: float = 15) -> None:
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass

    def _group(self, pid: int | None) -> list[psutil.Process]:
        """The process and its descendants, if the pid is still ours (started in state dir)."""
        if not pid:
            return []
        try:
            proc = psutil.Process(pid)
            if Path(proc.cwd()) != self.root:
                return []  # the pid was reused by someone else
            return [proc, *proc.children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return []

    def down(self, progress: Callable[[str], None] = lambda msg: None) -> list[str]:
        """Stop only what this stack started; data stays in the state dir."""
        state = self._load()
        stopped = []
        ray_procs = self._ray_processes()
        if ray_procs:
            progress("stopping Ray head")
            # Ray keeps no state worth a graceful stop (the head is ephemeral, its temp dir is
            # removed below), and once they are all signalled together the GCS, raylet and agents
            # wait on each other for 15 s or more: what has not exited after 3 s is killed.
            self._terminate(ray_procs, timeout=3)
            stopped.append("ray")
        for name in ("mlflow", "s3_gateway", "s3"):
            procs = self._group(state["pids"].get(name))
            if procs:
                progress(f"stopping {name}")
                try:
                    os.killpg(procs[0].pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
                self._terminate(procs, timeout=15)
                stopped.append(name)
            state["pids"].pop(name, None)
        state.pop("host", None)
        if self.state_file.exists():
            self._save(state)
        self._clean_temp()
        return stopped

    def _clean_temp(self) -> None:
        """Once the services are stopped: keep Ray's last session logs under logs/, remove its
        temp dir (sockets, runtime envs, spilled objects) and the stack's TMPDIR."""
        if self._ray_processes():
            return  # something of ours still runs: leave its files alone
        session_logs = self.ray_temp_dir / "session_latest" / "logs"
        if session_logs.is_dir():
            shutil.rmtree(self.ray_logs_kept, ignore_errors=True)
            self.logs.mkdir(parents=True, exist_ok=True)
            shutil.copytree(session_logs, self.ray_logs_kept, symlinks=True, ignore_dangling_symlinks=True,
                            dirs_exist_ok=True)
        shutil.rmtree(self.ray_temp_dir, ignore_errors=True)
        shutil.rmtree(self.haproxy_dir, ignore_errors=True)
        state = self._load()
        if not any(self._group(state.get("pids", {}).get(n)) for n in ("mlflow", "s3_gateway", "s3")):
            shutil.rmtree(self.tmp_dir, ignore_errors=True)

