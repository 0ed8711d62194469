"""Stand-in for ComfyUI's `folder_paths`: the user and input folders only (comfyui-facts.md; ComfyUI 0.8.0's
signatures)."""

import os

user_directory = os.path.join(os.path.dirname(os.path.abspath(__file__)), "user")
input_directory = os.path.join(os.path.dirname(os.path.abspath(__file__)), "input")


def get_user_directory() -> str:
    return user_directory


def set_user_directory(user_dir: str) -> None:
    global user_directory
    user_directory = user_dir


def get_input_directory() -> str:
    return input_directory


def set_input_directory(input_dir: str) -> None:
    global input_directory
    input_directory = input_dir
