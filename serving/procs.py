"""The tritonserver process and its python backend stubs, read from /proc (no psutil on this machine).

A stub is a child of tritonserver whose argv[0] ends in `triton_python_backend_stub`; its argv holds the
model instance name (`<model>_<group>_<index>`, e.g. `nhits_0_0`) right after the shared-memory sizes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

STUB = "triton_python_backend_stub"
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    argv: tuple[str, ...]

    @property
    def is_stub(self) -> bool:
        return bool(self.argv) and self.argv[0].endswith(STUB)

    @property
    def instance(self) -> str:
        """Model instance name of a stub (`nhits_0_0`), else the program name."""
        if self.is_stub:
            for arg in self.argv[1:]:
                if arg and not arg.isdigit() and "/" not in arg and not arg.startswith("triton_"):
                    return arg
        return Path(self.argv[0]).name if self.argv else str(self.pid)


def _read(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    ppid = int(stat.rsplit(")", 1)[1].split()[1])
    return Proc(pid, ppid, tuple(a.decode(errors="replace") for a in argv if a))


def children(pid: int) -> list[Proc]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            p = _read(int(entry.name))
            if p is not None and p.ppid == pid:
                out.append(p)
    return out


def stubs(server_pid: int) -> dict[str, Proc]:
    """Live stubs of a tritonserver, by model instance name."""
    return {p.instance: p for p in children(server_pid) if p.is_stub}


def rss_kb(pid: int) -> int:
    """Resident set size in KiB (0 when the process is gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB
    except (OSError, ValueError, IndexError):
        return 0


def memory(server_pid: int) -> dict[str, int]:
    """RSS in KiB of tritonserver and of each stub, plus their total."""
    out = {"tritonserver": rss_kb(server_pid)}
    for name, p in sorted(stubs(server_pid).items()):
        out[f"stub:{name}"] = rss_kb(p.pid)
    out["total"] = sum(out.values())
    return out
