"""megadoc.analysis: what the runs registry says: power laws and data efficiency (`laws`), the convex-tuning
certificate (`certificate`), figures (`plots`), and the `megadoc efficiency` / `megadoc report` commands."""
