"""Deliver raw clicks and conversions to customers' S3 buckets as gzipped CSV."""

import os

# polars allocates through its own jemalloc, configured once, when polars is first loaded;
# this package is imported before any of its modules load polars. One arena and no thread
# caches keep RSS lower while a window streams, at the same speed (README, "Tuning choices").
# An operator's own setting wins.
os.environ.setdefault("_RJEM_MALLOC_CONF", "narenas:1,tcache:false")
