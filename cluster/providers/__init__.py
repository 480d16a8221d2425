"""Node providers: what the autoscaling controller uses to start and stop a pool's nodes.

:class:`Provider` is the interface. Implementations live in submodules and are imported explicitly,
so optional dependencies (the ``kubernetes`` client) load only when used::

    from cluster.providers.kubernetes import KubernetesProvider
"""

from __future__ import annotations

from cluster.providers.base import Provider

__all__ = ["Provider"]
