"""The version of dmdb (read by the build, recorded on every fit)."""

__version__ = "0.1.0"
