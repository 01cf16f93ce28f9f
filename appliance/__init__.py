"""A DICOM edge appliance: receive, buffer, route and serve images on a small box."""

# The one place the version is written (pyproject.toml reads it): importlib.metadata would cost
# ~0.5 s of the boot under software emulation (it imports email, zipfile, csv...).
__version__ = "0.1.0"
