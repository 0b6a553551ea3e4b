"""How a module runs under Lightning's Trainer: strategies and sharded placement (:mod:`.sharding`), per-rank run
state in checkpoints (:mod:`.run_state`), atomic periodic checkpoints (:mod:`.checkpoints`), the callbacks the CLI
always adds (:mod:`.callbacks`) and the learning-rate schedule (:mod:`.schedule`)."""
