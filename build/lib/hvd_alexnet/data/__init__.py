"""ImageNet TFRecords: schema, writers (builder, demo set), reader + preprocessing.

Nothing here knows about Horovod: the reader takes `rank` and `size` as plain
arguments so it can be tested in one process.
"""
