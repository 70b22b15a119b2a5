"""vocwatch: deliver call recordings from a watched folder to Crescendo's Voice-of-Customer API."""

__version__ = "0.1.0"
