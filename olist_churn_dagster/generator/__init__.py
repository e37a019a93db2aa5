"""The synthetic Olist marketplace: a demo and test tool outside the runtime core.

`marketplace.generate_dataset` writes the nine Kaggle CSV files (`olist-churn generate`).
"""
