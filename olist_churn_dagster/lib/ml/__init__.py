"""Machine learning: labels, ABT, model, calibration, tracking, scoring, monitoring, backtest."""
