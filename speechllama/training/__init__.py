"""Training: the loop (device, DDP/FSDP2, checkpoints, resume; ``loop``, ``parallel``), one task per
stage (``ctc``, ``speech_llm``: each owns the data, model and loss of its stage), and the memory
plan of a run before it starts (``plan``, ``step_trace``)."""
