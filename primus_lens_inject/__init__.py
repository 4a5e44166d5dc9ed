"""primus-lens-inject: zero-code wandb capture for ML training containers.

Importing this package does nothing: the bootstrap (``sitecustomize``) imports ``patch`` only
when the program itself imports ``wandb``.
"""

__version__ = "0.1.0"
