"""Data layer: the contract (schema), the synthetic market, file loaders and the PostgreSQL store."""
