"""Reads: what a page or a stream needs, in as few queries as possible, one module a subject.

- ``live_states``: each portfolio's holdings valued at the latest prices (pages, API, ingest);
- ``past_values``: past values and returns over any range from the ledger and price history;
- ``snapshot_history``: the minute value snapshots (1D) and a period's performance from them;
- ``ledger_reads``: transactions as ledger entries, external flows, realizations;
- ``market_state``: an instrument's state as its page shows it, the feeds' health.
"""
