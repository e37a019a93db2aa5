-- MLflow's tracking server and the DuckLake catalog each get a database beside Dagster's.
CREATE DATABASE mlflow OWNER dagster;
CREATE DATABASE ducklake OWNER dagster;
