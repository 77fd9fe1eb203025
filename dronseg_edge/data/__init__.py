"""Data: the Kaggle AeroScapes layout (reader, validation), split, augmentation, synthetic scenes, RLE."""
