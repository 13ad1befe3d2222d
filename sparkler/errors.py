"""Root exception tree. Each error says whose fault it is.

* ConfigError: the user's input (CLI, config file, API body) is wrong. Nothing was changed.
* LoaderError: the kernel or initrd image is unusable (a ConfigError: the user chose the file).
* GuestFault: the guest broke a spec rule (bad address, bad descriptor). The device is marked broken.
* HostError: a host resource failed (KVM, files, sockets). KvmError and UnsupportedHost refine it.
"""


class SparklerError(Exception):
    """Base of every error Sparkler raises on purpose."""


class ConfigError(SparklerError):
    """Invalid user input: CLI flags, config file, API body."""


class LoaderError(ConfigError):
    """The kernel or initrd image cannot be loaded (missing, unreadable, malformed, too big)."""


class GuestFault(SparklerError):
    """The guest broke a rule: an access outside guest RAM, a malformed structure."""


class HostError(SparklerError):
    """A host resource failed."""


class KvmError(HostError):
    """A KVM ioctl failed or a required KVM capability is missing."""


class UnsupportedHost(HostError):
    """This host cannot run the requested guest (no /dev/kvm, missing capability, PVM host)."""
