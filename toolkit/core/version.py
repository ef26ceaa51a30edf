"""medsight's version, from the installed distribution's metadata (importable without anything heavy)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medsight")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
