"""Data: the Kaggle AeroScapes layout (reader, validation), split, augmentation, RLE; synthetic/ renders scenes."""
