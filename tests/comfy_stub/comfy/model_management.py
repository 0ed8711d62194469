"""Stand-in for `comfy.model_management`'s interrupt flag (ComfyUI 0.8.0 `model_management.py:1568-1587`)."""

import threading

interrupt_processing_mutex = threading.RLock()
interrupt_processing = False


class InterruptProcessingException(Exception):
    pass


def interrupt_current_processing(value: bool = True) -> None:
    global interrupt_processing
    with interrupt_processing_mutex:
        interrupt_processing = value


def processing_interrupted() -> bool:
    with interrupt_processing_mutex:
        return interrupt_processing


def throw_exception_if_processing_interrupted() -> None:
    global interrupt_processing
    with interrupt_processing_mutex:
        if interrupt_processing:
            interrupt_processing = False
            raise InterruptProcessingException()


def unload_all_models() -> None:
    """Moves ComfyUI's loaded models out of VRAM (nothing is loaded in the tests)."""


def soft_empty_cache(clear: bool = False) -> None:
    """Returns freed VRAM to the driver (no GPU in the tests)."""
