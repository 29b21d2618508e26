"""How a run happens: the plan (every check before anything loads, runs with their config hashes), the
runner (the suite: lock, one child process per run, signals), the child and its record of whatever
happened, the recipe (prepare -> train -> evaluate -> save -> measure -> commit), the settings a run
decides once, the training loop with its speed switches and distributed strategies, trackers, progress
lines and fault injection for the tests."""
