"""A DICOM edge appliance: receive, buffer, route and serve images on a small box."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dicom-appliance")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
