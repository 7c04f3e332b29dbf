"""Livefolio's Django project package and domain app.

The Celery app (portfolio/celery.py) is not loaded here, as Django projects usually do: daphne
imports this package, sends no tasks, and would carry Celery and kombu in memory for nothing
(docs/performance.md, "Decisions"). A process that sends tasks loads it: ``manage.py`` (the
feed, the demo, the shell), the tests (tests/conftest.py); ``celery -A portfolio`` finds it as
``portfolio.celery:app``. A task sent without it would go to Celery's default app (AMQP).
"""
