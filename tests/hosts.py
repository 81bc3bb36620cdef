"""Test hosts made of Linux namespaces, for tests/test_multi_host.py.

Each host is a network namespace (`ip netns`, iproute2) with loopback up and one veth leg on a bridge
that lives in the first host's namespace (so nothing touches the machine's own network). Every
process a host runs gets, through `unshare` (util-linux), its own hostname (UTS namespace) and its
own empty /tmp (a tmpfs in a private mount namespace; a checkout under /tmp is bound back in) as
working directory: hosts share neither localhost, nor a hostname, nor /tmp. Logs go to files the
test opened (inherited file descriptors).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .support import Proc

SUBNET = "10.77.0"  # private to the namespaces: the machine's routes never see it


class HostsUnavailable(RuntimeError):
    """Namespaces cannot be made here (no privilege, or iproute2 / util-linux missing)."""


def sh(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


@dataclass
class Hosts:
    """Namespaces `exo-<tag>-<name>`; the first name is the hub (it holds the bridge, address .1)."""

    names: list[str]
    logs: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    procs: list[Proc] = field(default_factory=list)
    made: list[str] = field(default_factory=list)

    def netns(self, name: str) -> str:
        return f"exo-{self.tag}-{name}"

    def ip(self, name: str) -> str:
        return f"{SUBNET}.{self.names.index(name) + 1}"

    def run_in(self, name: str, *argv: str) -> str:
        return sh("ip", "netns", "exec", self.netns(name), *argv)

    def create(self) -> None:
        """Make every namespace and the links; HostsUnavailable when the first `ip netns add` fails."""
        try:
            sh("ip", "netns", "add", self.netns(self.names[0]))
        except (OSError, RuntimeError) as exc:
            raise HostsUnavailable(str(exc)) from exc
        self.made.append(self.names[0])
        hub = self.names[0]
        self.run_in(hub, "ip", "link", "set", "lo", "up")
        self.run_in(hub, "ip", "link", "add", "br0", "type", "bridge")
        self.run_in(hub, "ip", "addr", "add", f"{self.ip(hub)}/24", "dev", "br0")
        self.run_in(hub, "ip", "link", "set", "br0", "up")
        for i, name in enumerate(self.names[1:], start=1):
            sh("ip", "netns", "add", self.netns(name))
            self.made.append(name)
            leg, peer = f"exo{self.tag}h{i}", f"exo{self.tag}p{i}"  # at most 15 characters
            # Both ends are made inside the hub's namespace, so none is ever left on the machine's own.
            self.run_in(hub, "ip", "link", "add", leg, "type", "veth", "peer", "name", peer)
            self.run_in(hub, "ip", "link", "set", peer, "netns", self.netns(name))
            self.run_in(hub, "ip", "link", "set", leg, "master", "br0", "up")
            self.run_in(name, "ip", "link", "set", "lo", "up")
            self.run_in(name, "ip", "link", "set", peer, "name", "eth0")
            self.run_in(name, "ip", "addr", "add", f"{self.ip(name)}/24", "dev", "eth0")
            self.run_in(name, "ip", "link", "set", "eth0", "up")

    def spawn(self, name: str, label: str, argv: list[str], env: dict[str, str], user: str | None = None) -> Proc:
        """Run `argv` on host `name` (hostname `name`, a private /tmp as cwd), as `user` if given."""
        command = shlex.join(["runuser", "-u", user, "--", *argv] if user else argv)
        script = f"hostname {name} && {_private_tmp()} && cd /tmp && exec {command}"
        wrapped = [
            *("ip", "netns", "exec", self.netns(name)),
            *("unshare", "--uts", "--mount", "--propagation", "private", "--", "sh", "-c", script),
        ]
        log = self.logs / f"{name}-{label}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            popen = subprocess.Popen(wrapped, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        proc = Proc(popen, log)
        self.procs.append(proc)
        return proc

    def pids(self, name: str) -> list[int]:
        try:
            return [int(p) for p in sh("ip", "netns", "pids", self.netns(name)).split()]
        except RuntimeError:  # the namespace is gone
            return []

    def kill(self, name: str, timeout: float = 10.0) -> int:
        """SIGKILL every process of host `name` (the host dies); returns how many there were."""
        killed: set[int] = set()
        deadline = time.monotonic() + timeout
        while pids := self.pids(name):
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                killed.add(pid)
            if time.monotonic() > deadline:
                raise TimeoutError(f"host {name} still has processes {pids} after {timeout} s")
            time.sleep(0.05)
        for proc in self.procs:
            if proc.popen.poll() is None and proc.popen.pid in killed:
                proc.popen.wait(timeout=5)
        return len(killed)

    def destroy(self) -> None:
        """Kill every process of every host, then delete the namespaces (their links go with them)."""
        for name in reversed(self.made):
            try:
                self.kill(name)
            except Exception as exc:  # keep tearing down the rest
                print(f"[hosts] could not empty {name}: {exc}", file=sys.stderr)
        for proc in self.procs:  # a process that left its namespace somehow (never a reaped pid's group)
            if proc.popen.poll() is None:
                proc.popen.kill()
                proc.popen.wait(timeout=5)
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "del", self.netns(name)], capture_output=True, timeout=30)
        self.made.clear()


def python(module: str, *args: str) -> list[str]:
    """argv running a module of this checkout with the test's interpreter (the code each host has installed)."""
    return [sys.executable, "-m", module, *args]


def kept_under_tmp() -> list[str]:
    """The checkout and its venv, where they live under /tmp (each host's private /tmp shows them)."""
    wanted = {Path(__file__).resolve().parent.parent, Path(sys.prefix).resolve()}
    under = sorted(str(p) for p in wanted if p.is_relative_to("/tmp"))
    return [p for p in under if not any(p.startswith(q + "/") for q in under)]


def _private_tmp() -> str:
    """Shell commands mounting an empty tmpfs on /tmp, with the checkout and its venv bound back in
    when they live under /tmp (a clone in /tmp would otherwise vanish under the new mount)."""
    mount = "mount -t tmpfs -o mode=1777,size=512m exo-tmp /tmp"
    keep = kept_under_tmp()
    if not keep:
        return mount
    binds = " && ".join(
        f"mkdir -p {shlex.quote(p)} && mount --bind {shlex.quote('/mnt' + p[4:])} {shlex.quote(p)}" for p in keep
    )
    return f"mount --bind /tmp /mnt && {mount} && {binds} && umount -l /mnt"
