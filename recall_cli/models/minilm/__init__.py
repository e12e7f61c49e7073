"""all-MiniLM-L6-v2: a readable BERT and the layered encoder around it (text only, fully offline)."""
