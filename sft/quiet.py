"""What a default run prints: our own progress, summaries and the warnings that matter, and no library chatter.

`debug=true` or `SFT_VERBOSE=1` leaves every library's output as it is. Each silenced line is named here with why:
a deprecation the library itself triggers (our own calls use the current APIs), an optional accelerator package
that is fetched from the Hub (which a cluster node often cannot reach), INFO lines, and transformers' progress
bars for loading or converting a model (our commands print what they load).
"""

from __future__ import annotations

import logging
import os
import warnings

LIBRARY_WARNINGS = (
    # peft's PeftModel reads the deprecated alias of `is_activation_checkpointing` when it wraps the model
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
    # torch.jit deprecation raised while importing libraries that still decorate with it
    (DeprecationWarning, r"`torch\.jit\.script_method` is deprecated"),
)
QUIET_LOGGERS = {
    "bitsandbytes.backends.cpu.ops": logging.ERROR,  # "Failed to load CPU gemm_4bit_forward from kernels-community"
    "absl": logging.WARNING,  # rouge-score's INFO lines ("Using default tokenizer.")
    "matplotlib": logging.WARNING,  # font cache INFO lines
}


def verbose(debug: bool = False) -> bool:
    return debug or os.environ.get("SFT_VERBOSE", "") not in ("", "0")


def quiet_libraries(debug: bool = False) -> None:
    """Silence the library output listed above, unless debug or SFT_VERBOSE=1. Call before the libraries load."""
    if verbose(debug):
        return
    for category, message in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # loading/converting weights; Hub downloads keep their own bars
