"""authserver: an OAuth 2.1 / OpenID Connect authorization server."""

from importlib.metadata import PackageNotFoundError, version

try:
    #: The installed distribution's version: pyproject.toml is its one source.
    __version__ = version("authserver")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
