"""SegmentationDataset and AugmentSeedSampler: a sample's augmentation depends on (seed, epoch, index) only."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, RandomSampler

from dronseg_edge.data.aeroscapes import dataset_samples
from dronseg_edge.data.dataset import AugmentSeedSampler, SegmentationDataset
from dronseg_edge.data.augment import AugmentConfig


def _dataset(synth_root) -> SegmentationDataset:
    samples = dataset_samples(synth_root, "train")[:8]
    return SegmentationDataset(samples, (48, 32), augment=AugmentConfig(noise_p=0.5, blur_p=0.5))


def _epoch_batches(loader: DataLoader, sampler: AugmentSeedSampler, generator: torch.Generator, epoch: int):
    generator.manual_seed(epoch)
    sampler.set_epoch(epoch)
    return [images for images, _ in loader]


def _loader(dataset, workers: int):
    generator = torch.Generator()
    sampler = AugmentSeedSampler(RandomSampler(dataset, generator=generator), seed=3)
    loader = DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=workers,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    return loader, sampler, generator


def test_seeded_item_is_reproducible_and_leaves_caller_rng_alone(synth_root):
    dataset = _dataset(synth_root)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first, second, other = dataset[(2, 77)], dataset[(2, 77)], dataset[(2, 78)]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])  # another seed augments differently


def test_resumed_epoch_with_persistent_workers_matches_an_uninterrupted_run(synth_root):
    dataset = _dataset(synth_root)
    loader, sampler, generator = _loader(dataset, workers=2)
    uninterrupted = [_epoch_batches(loader, sampler, generator, epoch) for epoch in range(2)]
    resumed_loader, resumed_sampler, resumed_generator = _loader(dataset, workers=2)  # fresh workers at epoch 1
    resumed = _epoch_batches(resumed_loader, resumed_sampler, resumed_generator, 1)
    in_process_loader, in_process_sampler, in_process_generator = _loader(dataset, workers=0)
    in_process = _epoch_batches(in_process_loader, in_process_sampler, in_process_generator, 1)
    assert len(resumed) == len(uninterrupted[1]) == 2
    for a, b, c in zip(uninterrupted[1], resumed, in_process):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert not all(torch.equal(a, b) for a, b in zip(uninterrupted[0], uninterrupted[1]))


def test_a_shrunk_mask_labels_the_pixels_its_image_shrinks_to(tmp_path):
    # INTER_AREA averages each 8x8 block: its label is the block's centre (majority) label, not its top-left pixel.
    import cv2
    import numpy as np

    from dronseg_edge.data.aeroscapes import Sample

    mask = np.zeros((64, 128), np.uint8)
    mask[:, 9:], mask[33:, :] = 9, 10  # boundaries one pixel into a block: 7/8 of those blocks are 9 or 10
    image = np.where(mask[..., None] == 0, 255, 0).astype(np.uint8).repeat(3, 2)
    cv2.imwrite(str(tmp_path / "i.png"), image), cv2.imwrite(str(tmp_path / "m.png"), mask)
    _, small = SegmentationDataset([Sample("i", tmp_path / "i.png", tmp_path / "m.png")], (16, 8), augment=None)[0]
    blocks = mask.reshape(8, 8, 16, 8).transpose(0, 2, 1, 3).reshape(8, 16, 64)
    majority = np.array([[np.bincount(block).argmax() for block in row] for row in blocks])
    assert np.array_equal(small.numpy(), majority)


def test_images_shrink_as_inference_shrinks_frames(tmp_path):
    # 1280x720 trained at 1280x704 (one side kept, one shrunk): the pictures' resize_frame, which every
    # inference path uses (INTER_LINEAR unless both sides shrink), not INTER_AREA chosen by the width alone.
    import cv2
    import numpy as np

    from dronseg_edge.data.aeroscapes import Sample
    from dronseg_edge.pictures import resize_frame

    image = np.random.default_rng(0).integers(0, 256, (72, 128, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "i.png"), image), cv2.imwrite(str(tmp_path / "m.png"), np.zeros((72, 128), np.uint8))
    for size in ((128, 70), (100, 80), (64, 36)):
        got, _ = SegmentationDataset([Sample("i", tmp_path / "i.png", tmp_path / "m.png")], size, augment=None)[0]
        assert np.array_equal(got.numpy().transpose(1, 2, 0), resize_frame(image[..., ::-1], *size))  # RGB here
