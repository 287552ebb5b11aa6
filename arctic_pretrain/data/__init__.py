"""Tokenized data: the shard format, packing into training windows, and the mixture sampler."""
