"""After training: export a run to a self-contained model folder, load it without the
project (`serving_runtime`), predict from files and serve over HTTP. The commands are run as
`python -m experiments.export`, `experiments.predict` and `experiments.serve`, which hand this
package the task lookup and each task's serving module (it imports no task itself)."""
