"""Networks and checkpoints: heads, network records, CPU convolutions, the embedding rule, and checkpoints that
say what they are (finding, safe loading, weight transfer, import from and export to other frameworks)."""
