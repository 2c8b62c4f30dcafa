"""The triage worklist: studies of batch jobs and of the DICOM node, ranked by score (issue 27).

``index`` is the SQLite index a page query runs on, ``ingest`` fills a job's index from its chunk
files, ``views`` draws what a study's viewer shows (film, map layer, reconstruction).
"""
