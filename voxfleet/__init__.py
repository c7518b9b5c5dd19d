"""voxfleet: streaming speech-to-text for many live clients."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("voxfleet")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
