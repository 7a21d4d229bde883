"""What the tests share besides fixtures: helper functions, test modules and clients, by topic.

``tests/`` is on pytest's ``pythonpath`` (pyproject.toml), so a test imports ``support.<topic>``;
a process a test starts finds this package through :data:`support.paths.TESTS` on its
``PYTHONPATH``. The fixtures themselves live in tests/conftest.py.

Tests wait on conditions (:func:`support.waiting.eventually`), not for a fixed while; a test
sleeps only where the passing time is what it tests (a window in which nothing may happen, an
expiry, a pace), and a comment beside the sleep says so.
"""
