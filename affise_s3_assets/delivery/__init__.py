"""A window's delivery: the export step that reads a window once and writes one object per
integration (step.py), the S3 window writer and its keys (writer.py), the record each delivered
window leaves (record.py), the journal of open uploads (upload_journal.py), and the tools that
deliver or check by hand (by_hand.py, connection_check.py).

Knows of runs only the tags they carry (automation/runs.py): how runs are planned is
automation's."""
