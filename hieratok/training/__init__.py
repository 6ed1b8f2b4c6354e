"""The training toolkit behind `train/*.py` (needs the `train` extra: accelerate, torchvision, tqdm, ...).

    cli          the shared command line (`base_parser`, validation, `--set` overrides, `setup_logging`)
    run          `Run`: accelerate set-up, the step loop, NaN guard, exports (read it top to bottom)
    checkpoint   pickle-free checkpoints (safetensors + JSON), sharded under FSDP2; `TrainState`
    data         ImageFolder / CIFAR-10 datasets, the deterministic resumable batch order
    distributed  native-bf16 detection, DTensor helpers, FSDP2 on CPUs and GPUs
    ema          the exponential moving average, whole or sharded like the model
    optim        AdamW parameter groups and the warm-up + cosine schedule
    tracking     the CSV metrics tracker for accelerate
    samples      image grids saved while training
    report       the evaluation report as Markdown
"""
