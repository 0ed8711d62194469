"""Stand-in for ComfyUI's `folder_paths`: the user folder only (comfyui-facts.md; ComfyUI 0.8.0's signatures)."""

import os

user_directory = os.path.join(os.path.dirname(os.path.abspath(__file__)), "user")


def get_user_directory() -> str:
    return user_directory


def set_user_directory(user_dir: str) -> None:
    global user_directory
    user_directory = user_dir
