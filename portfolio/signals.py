"""What the portfolio domain announces. The domain never imports streaming: streaming listens
(streaming/apps.py connects it) and pushes the news to the pages."""

from django.dispatch import Signal

# A portfolio's ledger changed and its holdings were recomputed; sent after the commit.
# Arguments: portfolio_id, owner_id.
portfolio_recomputed = Signal()
