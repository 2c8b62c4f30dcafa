"""The contract between training and serving: config, image reading, preprocessing, artifact, runtime.

Importing this package never imports torch; the torch network lives in :mod:`model.network`.
"""

__version__ = "0.1.0"
