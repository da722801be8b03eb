"""``python -m sweeplab.report``: see sweeplab.report.command."""

from sweeplab.report.command import main

main()
