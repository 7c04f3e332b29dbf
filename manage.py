#!/usr/bin/env python
"""Django's command-line utility for Livefolio."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portfolio.settings")
    from django.core.management import execute_from_command_line

    # Commands send tasks (runfeed, demo, shell) through Livefolio's Celery app; the portfolio
    # package does not load it (daphne sends none: portfolio/__init__.py).
    import portfolio.celery  # noqa: F401

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
