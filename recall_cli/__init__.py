"""recall: search your own photos, audio, video and notes from the terminal."""

__version__ = "0.1.0"
