"""The Kaggle AeroScapes layout's names, owned here and light to import (the CLI checks outputs against them):

    ROOT/imgs/imgs/{ImageID}.jpg      images
    ROOT/masks/masks/{ImageID}.png    class indices 0..11 (train images only)
    ROOT/train.csv, ROOT/test.csv     ImageID lists; ROOT/sampleSubmission.csv, the submission's rows
    ROOT/test_masks/{ImageID}.png     `synth` only: the test images' masks
"""

from pathlib import Path

IMAGE_DIR = Path("imgs/imgs")
MASK_DIR = Path("masks/masks")
TRAIN_CSV, TEST_CSV, SUBMISSION_CSV = "train.csv", "test.csv", "sampleSubmission.csv"
CSV_FILES = (TRAIN_CSV, TEST_CSV, SUBMISSION_CSV)
TEST_MASK_DIR = Path("test_masks")  # `synth` only: the test images' ground truth, for local scoring
FIX_LAYOUT = f"expected the Kaggle layout ROOT/{IMAGE_DIR}/*.jpg, ROOT/{MASK_DIR}/*.png, ROOT/{TRAIN_CSV}"
