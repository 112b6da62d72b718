"""Walk-forward backtesting: splits, metrics, portfolio simulation, report."""
