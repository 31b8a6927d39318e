"""The ssh scheduler: jobs spread over hosts reached with OpenSSH.

See :class:`SshScheduler` and docs/schedulers/ssh.md.
"""

from .host import HostUnavailable, SshHost
from .scheduler import SshScheduler

__all__ = ["HostUnavailable", "SshHost", "SshScheduler"]
