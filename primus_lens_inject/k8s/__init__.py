"""The admission webhook, a product of its own: it injects the bootstrap into pods.

What others may use: ``main``, the server (``primus-lens webhook`` runs it, passing the names of
the variables the injector reads, which this package cannot import).  ``admission`` holds the
decision and its JSONPatch, ``sidecar`` the pod agent's part of it, ``podspec`` what both read
and write in a pod spec, ``webhook`` the HTTPS server.  It imports the standard library and
the ``httpbody`` leaf only.  See docs/architecture.md and docs/kubernetes.md.
"""

from .webhook import main

__all__ = ["main"]
