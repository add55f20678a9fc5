"""What retrieval training and evaluation read: cached image features + the caption bank.

The images of a caption dataset go through the classification pipeline's feature cache
(`aape.features`) under the caption dataset's name: view 0 (centre crop) for every image, plus
`n_views` augmented views for train images. A `CaptionSplit` pairs a split's features with the
captions of the same images, in the same order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from aape.data import FeatureSet
from aape.datasets.base import ImageRecord
from aape.features import ExtractReport, load_features
from aape.missing_images import ImageUse, extract_usable, without
from aape.vl.bank import CaptionBank, CaptionStore, caption_bank
from prompt_banks.clip import LoadedCLIP
from prompt_banks.errors import UserError

# The paper does not say; COCO has 113k training images, so augmented views are opt-in.
DEFAULT_VL_VIEWS = 0


@dataclass
class CaptionSplit:
    """The features of a split's images and their captions; `captions.image_ids` equals
    `features.image_ids` (image i of the features has the captions of bank image i)."""

    features: FeatureSet
    captions: CaptionBank

    @property
    def n_images(self) -> int:
        return len(self.captions.image_ids)


def caption_records(
    store: CaptionStore, dataset: str, splits: Sequence[str] | None = None
) -> list[ImageRecord]:
    """The images of a caption dataset as feature-cache records (the label is unused: 0)."""
    return [
        ImageRecord(image_id, 0, "", split, path)
        for image_id, split, path in store.images(dataset, splits)
    ]


def extract_caption_features(
    store: CaptionStore,
    dataset: str,
    clip: LoadedCLIP,
    home: str | os.PathLike[str] | None,
    *,
    n_views: int = DEFAULT_VL_VIEWS,
    max_missing: int = 0,
    splits: Sequence[str] | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[ExtractReport, ImageUse]:
    """Cache the missing image features of a caption dataset. Missing or unreadable image files
    fail with the classification datasets' one-line error unless `max_missing` allows them;
    they are then left out (and their captions with them)."""
    records = caption_records(store, dataset, splits)
    _, report, use = extract_usable(
        lambda unusable: without(records, unusable),
        clip,
        home,
        dataset=dataset,
        max_missing=max_missing,
        n_views=n_views,
        batch_size=batch_size,
        progress=progress,
    )
    return report, use


def load_caption_split(
    store: CaptionStore,
    home: str | os.PathLike[str] | None,
    dataset: str,
    model_id: str,
    split: str,
    *,
    max_view: int | None = None,
) -> CaptionSplit:
    """Features and captions of one split's images; an image without features (unreadable)
    leaves its captions out too."""
    bank = caption_bank(store, dataset, model_id, splits=[split])
    try:
        feats = load_features(
            home, model_id, dataset, split, image_ids=bank.image_ids, max_view=max_view
        )
    except UserError as exc:
        raise UserError(
            f"features: none cached for caption dataset {dataset}/{split} with {model_id}; "
            f"run `aape vl embed --dataset {dataset}`"
        ) from exc
    if feats.n_images == 0:
        raise UserError(
            f"features: no image of {dataset}/{split} is cached for {model_id}; "
            f"run `aape vl embed --dataset {dataset}`"
        )
    position = {image_id: i for i, image_id in enumerate(bank.image_ids)}
    # Each image is its own "class" (its captions are its prompts): labels = image index, so
    # that `FeatureSet.subset_classes` selects images.
    feats = FeatureSet(
        x=feats.x,
        labels=feats.image_index.clone(),
        image_index=feats.image_index,
        view=feats.view,
        image_ids=feats.image_ids,
    )
    return CaptionSplit(feats, bank.subset([position[i] for i in feats.image_ids]))


def subset_images(split: CaptionSplit, keep: list[int]) -> CaptionSplit:
    """The images at positions `keep` (ascending) with their captions."""
    return CaptionSplit(split.features.subset_classes(keep), split.captions.subset(keep))
