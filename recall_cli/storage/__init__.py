"""The index directory and what is in it: its layout, the SQLite manifest, the LanceDB table of
units, the writer lock and filter literals."""
