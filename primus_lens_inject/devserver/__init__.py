"""The development receiver, a product of its own: a stand-in for the Lens telemetry-processor
and an OTLP/HTTP metrics endpoint, for a developer's machine, the tests and the demo.

What others may use: ``main``, the ``primus-lens receive`` command (which ``cli.main`` runs by
the module's name, so an image without this package says so instead of failing), and
``Receiver``, the server in-process (the tests' fixtures).  It imports the standard library and
the ``httpbody`` leaf only, and no injector module imports it; the wheel ships it, the image
leaves it out.  See docs/architecture.md.
"""

from .cli import main
from .receiver import Receiver

__all__ = ["Receiver", "main"]
