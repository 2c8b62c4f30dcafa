"""The DICOM node (``squid listen``) and DICOMweb: studies in over the network, results back.

- :mod:`scp` is the Storage SCP (which classes are scored, which skipped), :mod:`spool` files each
  instance durably and moves studies and results between its folders, :mod:`studies` scores a closed
  study through the batch-job path, :mod:`send` sends the SR and SC back (C-STORE, STOW-RS) with
  retries and dead letters, :mod:`node` runs the three as threads, :mod:`metrics` counts them.
- :mod:`dicomweb` finds and pulls studies (QIDO-RS, WADO-RS) for ``squid batch --dicomweb``.
"""
