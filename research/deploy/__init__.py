"""After training: export a run to a self-contained model folder, load it without the
project (`serving_runtime`), predict from files and serve over HTTP."""
