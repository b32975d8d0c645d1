"""Files and data: paths and environment variables, checkpoints, data sets, fetch, the authors' logs."""
