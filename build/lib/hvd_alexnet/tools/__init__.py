"""What measures and tests the trainer, not part of a training job: the
benchmark and its probes (`make bench`), the scaling model (`plan`), the chaos
run (`make chaos`), and the command line of a job on this host (`launch`)."""
