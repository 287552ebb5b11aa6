"""Text primitives shared by the data stages: code-aware dedup, benchmark decontamination, datatrove step helpers."""
