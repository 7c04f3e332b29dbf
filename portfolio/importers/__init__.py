"""Getting transactions in and out of Livefolio (CSV)."""
