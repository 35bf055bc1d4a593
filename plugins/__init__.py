"""The built-in surgeon plugins, one module each (installed as ``surgeon_plugins``).

They are registered through the ``surgeon`` entry-point group in setup.cfg,
exactly as third-party plugins are.
"""
