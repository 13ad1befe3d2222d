"""``sparkler-jailer`` / ``jailer``: Firecracker's jailer (catalog section 3) for Sparkler.

The jailer is a short-lived root process that builds a jail and execs the VMM in it: it sanitises
its fds and environment, copies the exec file into ``<base>/<exec-name>/<id>/root``, joins a network
namespace, sets resource limits and cgroups, pivots root into the jail, creates the device nodes,
optionally daemonizes and enters a new PID namespace, drops to ``--uid``/``--gid``, writes
``/<exec-name>.pid`` and execs ``/<exec-name> --id <id> --start-time-us ... <forwarded args>``.

Modules: ``cli`` (flags, errors, the sequence), ``limits`` (``--resource-limit``), ``cgroup``
(``--cgroup``, v1 and v2), ``namespaces`` (libc wrappers the 3.11 stdlib lacks), ``chroot`` (jail
directory, exec copy, pivot_root, device nodes), ``exec`` (daemonize, PID namespace, pid file, exec).
The jailer imports nothing from ``sparkler.vmm`` beyond the CLI helpers: it execs the VMM, it does
not link it.
"""


class JailerError(Exception):
    """A jailer failure after argument parsing; printed as ``Jailer error: <message>``, exit 1."""


__all__ = ["JailerError"]
