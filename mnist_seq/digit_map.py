"""The map of digits: what the layer before the classifier makes of each test digit,
projected to two dimensions.

PCA always (NumPy); t-SNE where scikit-learn is installed (`pip install
'mnist-seq[map]'`), UMAP where umap-learn is. Every projection is seeded, and PCA's axes
get a fixed sign, so the same run and seed give the same map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mnist_seq.data import to_float

DIGITS = 2000  # test digits on the map: enough to show the groups, quick to project


def features(model, images: np.ndarray) -> np.ndarray:
    """The classifier's input for each uint8 image, (n, features) float32."""
    import keras

    head = keras.Model(model.inputs[0], model.get_layer("classes").input)
    return np.asarray(head.predict(to_float(images), batch_size=500, verbose=0), np.float32)


def pca(points: np.ndarray, seed: int = 0) -> np.ndarray:
    """The two principal components (each axis's largest coordinate made positive)."""
    centred = points - points.mean(axis=0)
    _, _, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    xy = centred @ vt[:2].T
    signs = np.sign(xy[np.abs(xy).argmax(axis=0), [0, 1]])
    return (xy * np.where(signs == 0, 1, signs)).astype(np.float32)


def tsne(points: np.ndarray, seed: int = 0) -> np.ndarray:
    from sklearn.manifold import TSNE

    start = pca(points)  # a seeded start from PCA: the same map every time
    return TSNE(2, init=start / start[:, 0].std() * 1e-4, random_state=seed,
                perplexity=30).fit_transform(points).astype(np.float32)


def umap(points: np.ndarray, seed: int = 0) -> np.ndarray:
    import umap as umap_learn

    return umap_learn.UMAP(random_state=seed).fit_transform(points).astype(np.float32)


def projections() -> dict[str, Callable[[np.ndarray, int], np.ndarray]]:
    """The projections installed here, PCA first."""
    import importlib.util

    found = {"PCA": pca}
    if importlib.util.find_spec("sklearn") is not None:
        found["t-SNE"] = tsne
    if importlib.util.find_spec("umap") is not None:
        found["UMAP"] = umap
    return found


@dataclass
class DigitMap:
    """One projection of the test digits under the trained and the initial weights."""

    method: str
    trained: np.ndarray  # (n, 2)
    initial: np.ndarray | None  # (n, 2), None when the run kept no initial weights
    labels: np.ndarray  # true digits
    predicted: np.ndarray  # the trained model's answers


def digit_maps(model, initial, images: np.ndarray, labels: np.ndarray,
               seed: int = 0) -> list[DigitMap]:
    """Every installed projection of `images` (uint8) under `model` and `initial`."""
    predicted = np.asarray(model.predict(to_float(images), batch_size=500, verbose=0)).argmax(1)
    trained = features(model, images)
    before = None if initial is None else features(initial, images)
    return [DigitMap(name, project(trained, seed),
                     None if before is None else project(before, seed), labels, predicted)
            for name, project in projections().items()]
