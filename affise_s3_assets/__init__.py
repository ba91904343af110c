"""Deliver raw clicks and conversions to customers' S3 buckets as gzipped CSV.

Importing the package changes nothing outside it: settings of the process (the allocators'
`_RJEM_MALLOC_CONF` and `MALLOC_ARENA_MAX`) are the deployment's, set where its processes start
(deploy/Dockerfile, scripts/dev.sh, scripts/prod-local.sh; docs/design.md, "Tuning choices").
"""
