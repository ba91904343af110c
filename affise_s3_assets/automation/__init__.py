"""What starts runs without an operator: the schedules (schedules.py), the catch-up sensor
(catch_up.py: backlogs, missed ticks, failed windows healing), reconciliation (late rows),
live config (changes of the integrations file), the upload sweep, and the run tags and
statuses all of them share (runs.py).

Knows how a window is delivered only through the runs it requests."""
