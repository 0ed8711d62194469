"""A video as a few frames: which to take, and the words that tell the model what they are.

LM Studio's vision models take images, not video: a clip goes as frames picked evenly over it, in time order, in one
message, with a line that says which second each comes from (core's Generate Text samples a video the same way).
No ComfyUI imports: the node hands the frame count and the frame rate.
"""

from __future__ import annotations

DEFAULT_VIDEO_FRAMES = 8


def frame_indices(total: int, count: int) -> list[int]:
    """`count` frames of `total`, evenly over the clip: the middle frame of each of `count` equal stretches (a clip's
    first and last frames are often a fade), in time order, never the same frame twice."""
    if total <= 0 or count <= 0:
        return []
    if count >= total:
        return list(range(total))
    return sorted({min(total - 1, int((n + 0.5) * total / count)) for n in range(count)})


def frames_note(seconds: list[float], duration: float) -> str:
    """The line sent with the frames, so the model reads them as one clip in order, not as separate pictures."""
    at = ", ".join(f"{s:.1f} s" for s in seconds)
    return (f"The {len(seconds)} images are frames of one video of {duration:.1f} seconds, in time order, taken at "
            f"{at}.")
