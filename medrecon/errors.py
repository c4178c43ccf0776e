"""User-facing errors.

Every error a user can cause (a bad path, an unreadable study, mismatched shapes, an invalid
option) is raised as a :class:`MedreconError` subclass whose message is one clear sentence. The
CLI turns these into that sentence on stderr and exit code 2; anything else is a bug and keeps
its traceback.
"""


class MedreconError(Exception):
    """Base class of errors caused by user input; the message is shown verbatim."""


class InputError(MedreconError):
    """A path, file or option given by the user cannot be used."""


class DicomError(InputError):
    """A DICOM file or series is unreadable or inconsistent."""


class GeometryError(MedreconError):
    """Shapes, spacings or affines do not match where they must."""


class ConfigError(MedreconError):
    """A configuration file or value is invalid."""


class MeasurementError(InputError):
    """A measurement file is missing data or holds invalid values."""
