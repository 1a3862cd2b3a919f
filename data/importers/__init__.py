"""Ways into the catalog: local CSV/parquet files and Alpaca's historical bars API."""
