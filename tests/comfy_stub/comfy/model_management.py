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


# VRAM: ComfyUI's own models. The stand-in records the calls.
calls: list[str] = []


def unload_all_models() -> None:
    calls.append("unload_all_models")


def soft_empty_cache(clear: bool = False) -> None:
    calls.append("soft_empty_cache")
