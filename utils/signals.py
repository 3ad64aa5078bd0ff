"""Graceful stops: SIGTERM / SIGINT / SIGUSR1 become a request that a loop honours at its next step boundary.

    stop = StopRequest().install(device)  # in the training process, before the loop
    ...
    if stop.agreed():                     # once per step: True on every rank at the same step
        save(); print(f"stopped by {stop.name} ...")

Clusters send SIGTERM before killing a job (SLURM, Kubernetes; SLURM can send SIGUSR1 early with
`--signal=USR1@120`), a user presses Ctrl-C (SIGINT). The handler only sets a flag: the step in flight
finishes, so the checkpoint is the state after a whole step, the one a resumed run continues exactly. A
second Ctrl-C stops at once (the default action); further SIGTERM / SIGUSR1 (a scheduler repeating itself, a
launcher forwarding what the rank also got) do not interrupt the save.

Agreement. Every rank must stop at the same step, or the ranks that go on hang in their next all-reduce. The
flag is all-reduced (max) once per step on a CPU (gloo) group, asynchronously: the reduction started after step
k is read after step k+1, so it never waits on the GPU and costs no device-to-host copy; all ranks then stop
after the same step, one step after the first signal. (Where no gloo group can be made, the default group
agrees every FALLBACK_EVERY steps instead: a device sync that often, not every step.)

Launchers. torchrun forwards SIGTERM/SIGINT to every rank (and SIGKILLs them after
$TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds, default 30); `accelerate launch` with one process does not forward, so
a process started by a launcher asks the kernel for SIGTERM when its parent dies (`follow_parent`): no orphan.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
_PR_SET_PDEATHSIG = 1                    # linux/prctl.h
FALLBACK_EVERY = 10                      # steps between agreements without a gloo group
_LAUNCHER_ENV = ("LOCAL_RANK", "TORCHELASTIC_RUN_ID", "ACCELERATE_MIXED_PRECISION", "ACCELERATE_USE_CPU")


def ignore_stop_signals(*_) -> None:
    """A DataLoader `worker_init_fn`: workers leave stop signals to the main process (which ends them)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def follow_parent() -> bool:
    """Under a launcher (torchrun, accelerate), get SIGTERM when the launcher dies; True if set (Linux only)."""
    if not any(k in os.environ for k in _LAUNCHER_ENV):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() == 1:                # the launcher died before we asked
        os.kill(os.getpid(), signal.SIGTERM)
    return True


class StopRequest:
    """Turns stop signals into a flag; `agreed()` says, identically on every rank, whether to stop now."""

    def __init__(self):
        self.signum = 0                  # the first stop signal received here (0: none)
        self.stopped_by = 0              # the signal the ranks agreed to stop for
        self._previous = {}
        self._group = None
        self._pending = None             # (work, tensor) of the reduction started after the previous step
        self._device, self._every, self._calls = None, 1, 0

    def install(self, device=None) -> "StopRequest":
        """Handle the stop signals; under a process group, prepare the per-step agreement (`device`: where the
        fallback reduction runs when no gloo group can be made, e.g. no usable network interface for gloo)."""
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        follow_parent()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            try:
                self._group = dist.new_group(backend="gloo")     # host-side: no CUDA sync for one integer
            except (RuntimeError, ValueError):
                # The default group on `device`: reading its result syncs the stream, so only every 10 steps.
                self._group, self._device, self._every = dist.group.WORLD, device, FALLBACK_EVERY
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum and signum == signal.SIGINT:      # Ctrl-C twice: give up the graceful stop
            self.restore()
            signal.raise_signal(signum)
            return
        self.signum = self.signum or signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def agreed(self) -> bool:
        """Call once per step on every rank. True when some rank was signalled (all ranks return True together)."""
        if self._group is None:
            self.stopped_by = self.signum
            return bool(self.signum)
        self._calls += 1
        if self._calls % self._every:
            return False
        decided = 0
        if self._pending is not None:
            work, flag = self._pending
            work.wait()
            decided = int(flag.item())   # gloo: a CPU tensor, no device sync
        flag = torch.tensor([self.signum], dtype=torch.int64, device=self._device)
        self._pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True), flag)
        self.stopped_by = decided
        return bool(decided)

    def close(self, wait: bool = True) -> None:
        """Finish the reduction in flight (every rank started the same ones; `wait=False` when this rank is
        leaving on an error) and restore the handlers."""
        if self._pending is not None and wait:
            self._pending[0].wait()
        self._pending = None
        self.restore()

    @property
    def name(self) -> str:
        return signal.Signals(self.stopped_by or self.signum).name if (self.stopped_by or self.signum) else "none"
