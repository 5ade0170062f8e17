"""Captions for the offline training data (the digits and their renderings: ertacli.evaluation.digit_data)."""

from __future__ import annotations

import random

from ertacli.evaluation.digit_data import DIGIT_WORDS, MOTIONS


ADJECTIVES = (
    "thin", "thick", "bold", "neat", "messy", "slanted", "small", "large", "curly", "faded", "hurried", "careful",
    "tidy", "shaky", "rough", "blocky", "round", "narrow", "wide", "bright", "simple", "plain", "scribbled",
    "quick", "clean", "smudged", "crooked", "elegant", "tiny", "big", "sharp", "soft",
)
STYLES = (
    "drawn in thin strokes", "written with a marker", "in faded ink", "in pencil", "with a long tail",
    "written quickly", "on a dark background", "drawn by hand", "in white chalk", "with thick lines",
    "sketched lightly", "written carefully", "in bold strokes", "with a small loop", "in neat handwriting",
)
IMAGE_TEMPLATES = (
    "a handwritten {d}", "a {a} handwritten {d}", "the digit {d}", "the digit {d} {s}", "the number {d}",
    "a {a} {d}", "a {a} digit {d}", "{d}", "a picture of the number {d}", "handwritten {d} {s}",
    "a {a} number {d} {s}", "the {a} digit {d}", "an image of a {a} {d}", "a {d} written by hand",
)
MOTION_PHRASES = {
    "still": ("standing still", "holding still", "not moving", "staying in place"),
    "left": ("drifting left", "sliding to the left", "moving left", "gliding left"),
    "right": ("drifting right", "sliding to the right", "moving right", "gliding right"),
    "up": ("floating up", "moving up", "rising", "drifting upwards"),
    "down": ("sinking", "falling", "moving down", "drifting downwards"),
    "cw": ("rotating clockwise", "turning clockwise", "spinning clockwise", "twisting clockwise"),
    "ccw": ("rotating counterclockwise", "turning anticlockwise", "spinning counterclockwise",
            "twisting anticlockwise"),
}
VIDEO_TEMPLATES = ("{c} {m}", "the digit {d} {m}", "a {a} {d} {m}", "a handwritten {d} {m}", "the number {d} {m}")


def _name(rng: random.Random, digit: int) -> str:
    """The digit as a word (two times in three) or a numeral."""
    return DIGIT_WORDS[digit] if rng.random() < 2 / 3 else str(digit)


def image_caption(rng: random.Random, digit: int) -> str:
    """A free-text caption naming the digit."""
    t = rng.choice(IMAGE_TEMPLATES)
    return t.format(d=_name(rng, digit), a=rng.choice(ADJECTIVES), s=rng.choice(STYLES))


def video_caption(rng: random.Random, digit: int, motion: str) -> str:
    """A free-text caption naming the digit and (nine times in ten) its motion."""
    m = rng.choice(MOTION_PHRASES[motion])
    if motion == "still" and rng.random() < 0.5:
        return image_caption(rng, digit)
    t = rng.choice(VIDEO_TEMPLATES)
    return t.format(c=image_caption(rng, digit), d=_name(rng, digit), a=rng.choice(ADJECTIVES), m=m)


def caption_bank(video: bool, motions: tuple[str, ...], per_group: int,
                 seed: int) -> tuple[list[str], list[tuple[int, int]]]:
    """Captions and, per caption, its (digit, index into motions); images take motion 0 ("still") alone."""
    rng = random.Random(seed)
    texts, keys = [], []
    motions = tuple(motions) if video else MOTIONS[:1]
    for digit in range(10):
        for mi, motion in enumerate(motions):
            for _ in range(per_group):
                texts.append(video_caption(rng, digit, motion) if video else image_caption(rng, digit))
                keys.append((digit, mi))
    return texts, keys

