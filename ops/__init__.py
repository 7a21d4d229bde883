"""The ``dai`` CLI, the embedded NATS and PostgreSQL, and the runtime that starts the platform.

Nothing imports ``ops`` but the ``dai`` entry point (``ops.cli:main``): it is the top layer.
"""

__all__: list[str] = []
