"""Plots shared by the Keras and PyTorch lessons (matplotlib only, no framework import).

A training history is a dict of lists with the keys Keras uses: ``loss``, ``accuracy`` and,
when there is validation data, ``val_loss``, ``val_accuracy`` (``history.history`` in Keras;
the PyTorch lesson fills the same dict).
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np


def join_histories(first: dict, second: dict) -> tuple[dict, int]:
    """Two training phases as one history, plus the epoch where the second one starts."""
    joined = {k: list(first.get(k, [])) + list(second.get(k, [])) for k in first.keys() | second.keys()}
    return joined, len(first["loss"])


def plot_history(history: dict, fine_tune_start: int | None = None, title: str = "", best_epoch: int | None = None):
    """Loss and accuracy per epoch; a dashed line marks where fine-tuning starts, a star the kept epoch."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        epochs = np.arange(1, len(history[metric]) + 1)
        ax.plot(epochs, history[metric], "o-", label=f"train {metric}")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], "s-", label=f"validation {metric}")
            if best_epoch is not None:
                ax.plot(best_epoch, history[f"val_{metric}"][best_epoch - 1], "*", color="black", markersize=14,
                        label=f"kept: epoch {best_epoch}")
        if fine_tune_start is not None:
            ax.axvline(fine_tune_start + 0.5, color="gray", linestyle="--", label="start fine-tuning")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.show()


def compare_histories(histories: dict, title: str = ""):
    """Training (dotted) and validation (solid) accuracy per epoch of several runs, one colour per run."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, (name, history) in enumerate(histories.items()):
        colour = f"C{i}"
        epochs = np.arange(1, len(history["accuracy"]) + 1)
        ax.plot(epochs, history["accuracy"], ":", color=colour)
        ax.plot(epochs, history["val_accuracy"], "-", color=colour, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_title(title + ("\n" if title else "") + "solid: validation, dotted: training", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()


def show_predictions(images, y_true, y_pred, class_names, n: int = 15):
    """A grid of test images titled with the prediction; wrong ones in red."""
    n = min(n, len(images))
    cols = 5
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(2 * cols, 2.2 * ((n + cols - 1) // cols)))
    for i, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i])
            ok = y_true[i] == y_pred[i]
            ax.set_title(class_names[y_pred[i]] + ("" if ok else f"\n(is {class_names[y_true[i]]})"),
                         color="black" if ok else "red", fontsize=9)
    fig.tight_layout()
    plt.show()


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def plot_confusion_matrix(matrix, class_names, title: str = "confusion matrix"):
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, count, ha="center", va="center", color="white" if count > matrix.max() / 2 else "black")
    ax.set_title(title)
    fig.tight_layout()
    plt.show()
