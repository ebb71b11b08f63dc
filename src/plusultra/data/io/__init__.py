"""Reading: SQLite access, importers, the synthetic fixture and the built-in datasets."""
