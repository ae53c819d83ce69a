"""The pipeline: configs (config), the process's runtime (runtime), what a step needs (trainer, optim), the training
loop (train, progress, checkpoint), the pretrain and few-shot stages, scoring and submission files (runs), the rank
check (monitor), stand-alone ground truth (standalone), the pre-flight and the command line (cli)."""
