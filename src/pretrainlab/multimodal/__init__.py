"""Multimodal data path: sample format, discretizers, time-slice sync check and token shards.

``mm demo-data`` writes a synthetic dataset, ``mm fit`` trains the discretizers
(image/audio k-means codebooks, action bins), ``mm build`` turns the dataset into
token shards in the text-shard format (docs/MULTIMODAL.md) that `train` reads unchanged.
"""
